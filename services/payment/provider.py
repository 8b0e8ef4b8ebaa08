"""The card provider interface and the built-in simulated provider of CONTRACT.md
(Stripe's adapter: services/payment/stripe_provider.py, chosen by PAYMENT_PROVIDER)."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import asyncpg

from services.payment.errors import ProviderUnavailableError
from shared.money import Money

Outcome = Literal["approved", "declined"]


@dataclass(frozen=True)
class Charge:
    outcome: Outcome
    provider_reference: str


class CardProvider(Protocol):
    async def charge(self, *, idempotency_key: str, method: str, amount: Money) -> Charge:
        """Charge once per idempotency key: a repeated key returns the first result.

        Raises ProviderUnavailableError when the provider cannot be reached; the
        outcome is then unknown and the same key may be tried again.
        """
        ...

    async def lookup(self, *, idempotency_key: str) -> Charge | None:
        """What the provider did under this key; None when it holds no charge for it.

        Reconciliation asks this about a purchase whose charge outcome is unknown.
        Raises ProviderUnavailableError when the provider cannot be reached.
        """
        ...


class SimulatedProvider:
    """The simulated card network, keyed by idempotency key like a real provider:

    - `pm_card_ok`: approved;
    - `pm_card_declined` (and any unknown method): declined;
    - `pm_card_flaky`: the first attempt charges the card but its answer is lost
      (a timeout); a retry with the same key gets the original approval;
    - `pm_card_timeout`: charges the card, but every answer to `charge` is lost; only
      `lookup` (reconciliation) learns that it was approved;
    - `pm_card_down`: `charge` is unreachable on every attempt and nothing is charged;
      `lookup` answers (no charge), so reconciliation fails the purchase.

    Its records stand for the provider's own books, so they must outlive a restart of
    the payment service: they are kept in the table `simulated_card_charges` (in the
    payment schema, written outside the service's transactions, as a remote system's
    would be).
    """

    def __init__(self, pool: Callable[[], asyncpg.Pool], *, latency_ms: int = 0) -> None:
        self._pool = pool
        self._latency_s = latency_ms / 1000

    async def charge(self, *, idempotency_key: str, method: str, amount: Money) -> Charge:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if method == "pm_card_down":
            raise ProviderUnavailableError("simulated provider: unreachable")
        approved = method in ("pm_card_ok", "pm_card_flaky", "pm_card_timeout")
        outcome: Outcome = "approved" if approved else "declined"
        row = await self._pool().fetchrow(
            """
            INSERT INTO simulated_card_charges AS c
                (idempotency_key, method, amount_minor, currency, outcome, reference)
            VALUES ($1, $2, $3, $4, $5,
                    CASE WHEN $5 = 'approved' THEN 'sim_ch_' ELSE 'sim_dc_' END || $1)
            ON CONFLICT (idempotency_key) DO UPDATE SET calls = c.calls + 1
            RETURNING outcome, reference, calls
            """,
            idempotency_key,
            method,
            amount.amount_minor,
            amount.currency,
            outcome,
        )
        assert row is not None
        if method == "pm_card_timeout" or (method == "pm_card_flaky" and row["calls"] == 1):
            raise ProviderUnavailableError("simulated provider: timed out after charging")
        return Charge(row["outcome"], row["reference"])

    async def lookup(self, *, idempotency_key: str) -> Charge | None:
        row = await self._pool().fetchrow(
            "SELECT outcome, reference FROM simulated_card_charges WHERE idempotency_key = $1",
            idempotency_key,
        )
        return Charge(row["outcome"], row["reference"]) if row else None
