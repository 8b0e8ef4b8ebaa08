"""The payout provider on Stripe Connect: a payout is a transfer from the platform's
balance to the creator's connected account (their `payout_method`, `acct_…`).

Each transfer is made under the payout_id as idempotency key and as `transfer_group`
(and metadata `payout_id`). `status` lists the transfers of that group: Stripe's list
endpoints read its primary records (strongly consistent, unlike its Search API), so a
transfer made is found at once. Stripe then pays the connected account out to its bank
on that account's own schedule; that is the account's business, not this payout's.

Currency: a transfer moves money the platform holds in that currency. A creator's
payout currency (payout.creator-updated) must be one the platform's Stripe balance is
kept in, else Stripe refuses the transfer (`balance_insufficient`) and the payout fails
as `provider_rejected`, its diamonds released. Transfers are not converted here.
"""

import logging

import stripe

from services.payout.errors import PayoutOutcomeUnknownError
from services.payout.provider import Transfer
from shared.money import Money
from shared.stripe_kit import UnsupportedAmountError, answer_lost, describe, to_stripe_amount

log = logging.getLogger(__name__)

CONNECTED_ACCOUNT_PREFIX = "acct_"


def rejection(error: stripe.StripeError) -> Transfer | None:
    """The final refusal a Stripe error means for a transfer, or None when its outcome
    is unknown (see `answer_lost`).

    A 400 or 404 (`InvalidRequestError`: no such destination, `balance_insufficient`,
    `transfers_not_allowed`, an amount below the minimum, …) made no transfer, and
    Stripe answers the same again under the same key: rejected, the diamonds released.
    """
    if answer_lost(error) or not isinstance(error, stripe.InvalidRequestError):
        return None
    return Transfer("rejected", f"stripe_{error.code or 'invalid_request'}")


class StripeTransfers:
    """`PayoutProvider` on Stripe transfers to connected accounts (see the module)."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._transfers = client.v1.transfers

    async def pay(self, *, payout_id: str, method: str, amount: Money) -> Transfer:
        if not method.startswith(CONNECTED_ACCOUNT_PREFIX):
            return Transfer("rejected", "stripe_not_a_connected_account")
        try:
            stripe_amount, currency = to_stripe_amount(amount)
        except UnsupportedAmountError as error:
            log.error("stripe: payout %s not sent: %s", payout_id, error)
            return Transfer("rejected", "stripe_unsupported_amount")
        try:
            transfer = await self._transfers.create_async(
                {
                    "amount": stripe_amount,
                    "currency": currency,
                    "destination": method,
                    "transfer_group": payout_id,
                    "metadata": {"payout_id": payout_id},
                },
                {"idempotency_key": payout_id},
            )
        except stripe.StripeError as error:
            refused = rejection(error)
            if refused is None:
                raise PayoutOutcomeUnknownError(f"stripe: transfer: {describe(error)}") from None
            log.warning("stripe: payout %s rejected: %s", payout_id, describe(error))
            return refused
        return Transfer("paid", transfer.id)

    async def status(self, *, payout_id: str) -> Transfer | None:
        """The transfer made for this payout; None when Stripe has none (never made, or
        refused: a refusal leaves no transfer, and paying again is refused again)."""
        try:
            found = await self._transfers.list_async({"transfer_group": payout_id, "limit": 10})
        except stripe.StripeError as error:
            raise PayoutOutcomeUnknownError(f"stripe: list transfers: {describe(error)}") from None
        if not found.data:
            return None
        if len(found.data) > 1:
            # One idempotency key makes one transfer; more means one was made after the
            # key expired (24 h). Paid once as far as this payout goes; the operator
            # reverses the extra one in Stripe's dashboard.
            log.error(
                "stripe: payout %s has %d transfers: %s",
                payout_id,
                len(found.data),
                ", ".join(t.id for t in found.data),
            )
        return Transfer("paid", found.data[-1].id)  # newest first: the oldest is the one
