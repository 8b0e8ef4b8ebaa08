"""How the reconciliation asks a provider (the card network, the bank) what it did.

A provider keeps its own books; a reconciliation asks them about our records by the key
the provider knows them by (a charge's idempotency key, a payout_id). A lookup that
cannot be asked says why, and the check reports itself as not checked: never as passed.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

CARD_NOT_RECORDED = (
    "not checked: the simulated provider keeps no records outside the service "
    "(issue 10 gives it a table)"
)


@dataclass(frozen=True)
class ProviderRecord:
    """What a provider did: its outcome ("approved", "paid", ...) and the money moved."""

    outcome: str
    amount_minor: int
    currency: str


class ProviderLookup(Protocol):
    @property
    def unavailable(self) -> str | None:
        """Why this provider cannot be asked (the check is then not run), or None."""
        ...

    async def find(
        self, conn: asyncpg.Connection, keys: Sequence[str]
    ) -> dict[str, ProviderRecord]:
        """The provider's records of these keys (a key it never saw is left out).
        `conn` is the reconciliation's snapshot; a lookup that calls an API ignores it."""
        ...


@dataclass(frozen=True)
class NoRecords:
    """A provider whose books cannot be read from here."""

    reason: str

    @property
    def unavailable(self) -> str | None:
        return self.reason

    async def find(
        self, conn: asyncpg.Connection, keys: Sequence[str]
    ) -> dict[str, ProviderRecord]:
        raise RuntimeError(self.reason)


class SimulatedBankBooks:
    """The simulated bank's books: the table `payout.simulated_bank_transfers`, which
    services/payout/provider.py keeps as the bank's own records (outside the payout
    service's transactions), by payout_id."""

    unavailable: str | None = None

    async def find(
        self, conn: asyncpg.Connection, keys: Sequence[str]
    ) -> dict[str, ProviderRecord]:
        rows = await conn.fetch(
            """
            SELECT payout_id, outcome, amount_minor, currency
            FROM payout.simulated_bank_transfers WHERE payout_id = ANY($1::text[])
            """,
            list(keys),
        )
        return {
            row["payout_id"]: ProviderRecord(row["outcome"], row["amount_minor"], row["currency"])
            for row in rows
        }


@dataclass(frozen=True)
class Providers:
    card: ProviderLookup
    bank: ProviderLookup


def providers(*, bank: str = "simulated") -> Providers:
    """The lookups of a deployment: the card provider's books are not readable yet (the
    simulated one keeps them in the payment process's memory); the bank's are the
    simulated bank's table, or `none` for a bank this command cannot ask."""
    if bank not in ("simulated", "none"):
        raise ValueError(f"unknown bank books {bank!r}")
    return Providers(
        card=NoRecords(CARD_NOT_RECORDED),
        bank=SimulatedBankBooks()
        if bank == "simulated"
        else NoRecords("not checked: --bank none (this command cannot ask the bank)"),
    )
