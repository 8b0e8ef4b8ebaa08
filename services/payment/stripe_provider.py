"""The card provider on Stripe: one PaymentIntent per purchase, keyed by its request_id.

A charge is two calls, each under its own idempotency key derived from the request_id:

1. create the PaymentIntent (amount, currency, the payment method, card only,
   metadata `request_id`), not confirmed: this moves no money, so repeating it is
   harmless. Its id is recorded in `stripe_payment_intents` before anything else;
2. confirm it (`error_on_requires_action`: there is no customer on the line to pass
   3-D Secure, so a card that asks for it is declined at once instead of waiting).

Why not one create-and-confirm call: reconciliation must learn what happened under an
idempotency key whose answer was lost, and Stripe has no lookup by idempotency key.
Its Search API finds PaymentIntents by metadata, but "data is searchable in less than a
minute … up to an hour behind during outages" (Stripe's API reference): a search that
misses a fresh charge would fail a purchase the card paid for. Replaying the
create-and-confirm to learn its result would charge when nothing was charged. So the
adapter records the PaymentIntent before confirming it: no record means never
confirmed, hence never charged; a record is read back by id, which is strongly
consistent.

Reconciliation fences a charge call still on its way: a key without a record is closed
(a record without a PaymentIntent, which `charge` will not confirm), and an intent
never confirmed is cancelled, so neither can charge after "no charge" was answered.
"""

import logging
from collections.abc import Callable
from typing import Literal

import asyncpg
import stripe

from services.payment.errors import ProviderUnavailableError
from services.payment.provider import Charge
from shared.money import Money
from shared.stripe_kit import UnsupportedAmountError, answer_lost, describe, to_stripe_amount

log = logging.getLogger(__name__)

Verdict = Literal["approved", "declined", "no_charge", "unknown"]


def verdict(intent: stripe.PaymentIntent) -> Verdict:
    """What a PaymentIntent's status means for its purchase.

    - `succeeded`: approved.
    - `requires_payment_method` after an attempt (a decline, or 3-D Secure refused by
      `error_on_requires_action`), `requires_action` (only without that flag: no
      customer could complete it): declined.
    - `canceled`: declined when an attempt failed first, else no charge (reconciliation
      cancels intents that were never confirmed).
    - `requires_confirmation`: no charge yet (never confirmed).
    - `processing`, `requires_capture` (not made here: capture is automatic), anything
      new: unknown; reconciliation asks again later, an operator looks at the intent.
    """
    status = intent.status
    if status == "succeeded":
        return "approved"
    if status in ("requires_payment_method", "requires_action"):
        return "declined"
    if status == "canceled":
        return "declined" if intent.last_payment_error else "no_charge"
    if status == "requires_confirmation":
        return "no_charge"
    return "unknown"


def _unavailable(what: str, error: stripe.StripeError) -> ProviderUnavailableError:
    if not answer_lost(error):
        # A request Stripe refused as malformed: a bug or a setting (an unsupported
        # currency, an amount below Stripe's minimum). Loud, and never a decline: the
        # purchase stays pending until reconciliation finds that nothing was charged.
        log.error("stripe: %s refused: %s", what, describe(error))
    return ProviderUnavailableError(f"stripe: {what}: {describe(error)}")


class StripeCardProvider:
    """`CardProvider` on Stripe's PaymentIntents (see the module's docstring).

    `pool` is the payment service's database, where the adapter records the
    PaymentIntent of each idempotency key (table `stripe_payment_intents`).
    """

    def __init__(self, client: stripe.StripeClient, pool: Callable[[], asyncpg.Pool]) -> None:
        self._intents = client.v1.payment_intents
        self._pool = pool

    async def charge(self, *, idempotency_key: str, method: str, amount: Money) -> Charge:
        recorded = await self._recorded(idempotency_key)
        if recorded is None:
            created = await self._create(idempotency_key, method, amount)
            if isinstance(created, Charge):
                return created  # refused before any intent existed
            recorded = await self._record(idempotency_key, created)
        if recorded == "":
            raise ProviderUnavailableError(
                f"stripe: {idempotency_key} was closed by reconciliation; not confirmed"
            )
        return self._charge_of(await self._confirm(idempotency_key, recorded))

    async def lookup(self, *, idempotency_key: str) -> Charge | None:
        recorded = await self._recorded(idempotency_key)
        if recorded is None:
            recorded = await self._close(idempotency_key)
        if recorded == "":
            return None  # never confirmed, and closed: no call may confirm it any more
        intent = await self._retrieve(recorded)
        if intent.status == "requires_confirmation":
            intent = await self._cancel(idempotency_key, recorded)
        if verdict(intent) == "no_charge":
            return None
        return self._charge_of(intent)

    def _charge_of(self, intent: stripe.PaymentIntent) -> Charge:
        found = verdict(intent)
        if found == "approved" or found == "declined":
            return Charge(found, intent.id)
        raise ProviderUnavailableError(f"stripe: PaymentIntent {intent.id} is {intent.status}")

    async def _create(self, key: str, method: str, amount: Money) -> stripe.PaymentIntent | Charge:
        try:
            stripe_amount, currency = to_stripe_amount(amount)
        except UnsupportedAmountError as error:
            log.error("stripe: purchase %s not charged: %s", key, error)
            raise ProviderUnavailableError(f"stripe: {error}") from None
        try:
            return await self._intents.create_async(
                {
                    "amount": stripe_amount,
                    "currency": currency,
                    "payment_method": method,
                    "allowed_payment_method_types": ["card"],
                    "metadata": {"request_id": key},
                },
                {"idempotency_key": key},
            )
        except stripe.InvalidRequestError as error:
            if error.param == "payment_method":
                # The method does not exist or cannot pay (Stripe made no intent): the
                # buyer's card is refused, as a decline is.
                return Charge("declined", error.request_id or f"stripe_{error.code}")
            raise _unavailable("create PaymentIntent", error) from None
        except stripe.StripeError as error:
            raise _unavailable("create PaymentIntent", error) from None

    async def _confirm(self, key: str, intent_id: str) -> stripe.PaymentIntent:
        try:
            return await self._intents.confirm_async(
                intent_id,
                {"error_on_requires_action": True},
                {"idempotency_key": f"{key}:confirm"},
            )
        except stripe.CardError:
            # Declined; the intent tells how (its last_payment_error), read it back.
            return await self._retrieve(intent_id)
        except stripe.InvalidRequestError as error:
            if error.code == "payment_intent_unexpected_state":
                # Confirmed before (its idempotency key expired after 24 h) or cancelled
                # by reconciliation: the intent as it is now is the answer.
                return await self._retrieve(intent_id)
            raise _unavailable("confirm PaymentIntent", error) from None
        except stripe.StripeError as error:
            raise _unavailable("confirm PaymentIntent", error) from None

    async def _retrieve(self, intent_id: str) -> stripe.PaymentIntent:
        try:
            return await self._intents.retrieve_async(intent_id)
        except stripe.StripeError as error:
            raise _unavailable("retrieve PaymentIntent", error) from None

    async def _cancel(self, key: str, intent_id: str) -> stripe.PaymentIntent:
        """Cancel an intent never confirmed, so a confirm still on its way fails."""
        try:
            return await self._intents.cancel_async(
                intent_id,
                {"cancellation_reason": "abandoned"},
                {"idempotency_key": f"{key}:cancel"},
            )
        except stripe.InvalidRequestError as error:
            if error.code == "payment_intent_unexpected_state":
                return await self._retrieve(intent_id)  # a confirm got there first
            raise _unavailable("cancel PaymentIntent", error) from None
        except stripe.StripeError as error:
            raise _unavailable("cancel PaymentIntent", error) from None

    # The record: None no row; "" closed by reconciliation; else the PaymentIntent id.

    async def _recorded(self, key: str) -> str | None:
        row = await self._pool().fetchrow(
            "SELECT payment_intent_id FROM stripe_payment_intents WHERE request_id = $1", key
        )
        return None if row is None else row["payment_intent_id"] or ""

    async def _record(self, key: str, intent: stripe.PaymentIntent) -> str:
        """Record the intent of `key` unless one is recorded (or the key closed) already;
        returns what is recorded. Another intent found there wins: this one was made
        after its idempotency key expired and is never confirmed (it charges nothing)."""
        return await self._insert(key, intent.id)

    async def _close(self, key: str) -> str:
        """Mark `key` closed unless an intent is recorded for it; returns what is."""
        return await self._insert(key, None)

    async def _insert(self, key: str, intent_id: str | None) -> str:
        async with self._pool().acquire() as conn:
            await conn.execute(
                "INSERT INTO stripe_payment_intents (request_id, payment_intent_id)"
                " VALUES ($1, $2) ON CONFLICT (request_id) DO NOTHING",
                key,
                intent_id,
            )
            # A statement of its own: its snapshot sees a row a concurrent call inserted
            # (the INSERT waited for it to commit), which the INSERT's snapshot did not.
            recorded: str | None = await conn.fetchval(
                "SELECT payment_intent_id FROM stripe_payment_intents WHERE request_id = $1",
                key,
            )
        return recorded or ""
