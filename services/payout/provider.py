"""The payout provider interface and the built-in simulated bank of CONTRACT.md (Stripe's
adapter: services/payout/stripe_provider.py, chosen by PAYOUT_PROVIDER)."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import asyncpg

from services.payout.errors import PayoutOutcomeUnknownError
from shared.money import Money

Outcome = Literal["paid", "rejected"]


@dataclass(frozen=True)
class Transfer:
    outcome: Outcome
    provider_reference: str


class PayoutProvider(Protocol):
    async def pay(self, *, payout_id: str, method: str, amount: Money) -> Transfer:
        """Pay once per payout_id (the idempotency key): a repeat returns the first result.

        Raises PayoutOutcomeUnknownError when the answer is lost (a timeout): the money
        may have moved. Ask `status` before anything else.
        """
        ...

    async def status(self, *, payout_id: str) -> Transfer | None:
        """What happened to a payout; None when the provider never received it (or, for
        a provider that keeps no refusals, refused it: paying again is refused again).

        Raises PayoutOutcomeUnknownError when the provider cannot be asked now.
        """
        ...


class SimulatedBank:
    """The simulated payout provider, keyed by payout_id like a real one:

    - `po_bank_ok`: paid;
    - `po_bank_rejected` (and any unknown method): rejected;
    - `po_bank_flaky`: the first call pays but its answer is lost (a timeout); the
      status lookup (and any repeat) says paid.

    Its records stand for the provider's own books, so they must outlive a restart of
    the payout service: they are kept in the table `simulated_bank_transfers` (in the
    payout schema, written outside the service's transactions, as a remote system's
    would be).
    """

    def __init__(self, pool: Callable[[], asyncpg.Pool], *, latency_ms: int = 0) -> None:
        self._pool = pool
        self._latency_s = latency_ms / 1000

    async def pay(self, *, payout_id: str, method: str, amount: Money) -> Transfer:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        outcome: Outcome = "paid" if method in ("po_bank_ok", "po_bank_flaky") else "rejected"
        row = await self._pool().fetchrow(
            """
            INSERT INTO simulated_bank_transfers AS t
                (payout_id, method, amount_minor, currency, outcome, reference)
            VALUES ($1, $2, $3, $4, $5, 'sim_po_' || $1)
            ON CONFLICT (payout_id) DO UPDATE SET calls = t.calls + 1
            RETURNING outcome, reference, calls
            """,
            payout_id,
            method,
            amount.amount_minor,
            amount.currency,
            outcome,
        )
        assert row is not None
        if method == "po_bank_flaky" and row["calls"] == 1:
            raise PayoutOutcomeUnknownError("simulated bank: timed out after paying")
        return Transfer(row["outcome"], row["reference"])

    async def status(self, *, payout_id: str) -> Transfer | None:
        row = await self._pool().fetchrow(
            "SELECT outcome, reference FROM simulated_bank_transfers WHERE payout_id = $1",
            payout_id,
        )
        return Transfer(row["outcome"], row["reference"]) if row else None
