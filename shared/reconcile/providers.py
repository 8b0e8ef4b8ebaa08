"""How the reconciliation asks a provider (the card network, the bank) what it did.

A provider keeps its own books; a reconciliation asks them about our records by the key
the provider knows them by (a charge's idempotency key, a payout_id). A lookup that
cannot be asked says why, and the check reports itself as not checked: never as passed.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg


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


@dataclass(frozen=True)
class SimulatedBooks:
    """A simulated provider's books: the table its adapter keeps as the provider's own
    records (outside the service's transactions), looked up by the provider's key."""

    table: str
    key_column: str
    unavailable: str | None = None

    async def find(
        self, conn: asyncpg.Connection, keys: Sequence[str]
    ) -> dict[str, ProviderRecord]:
        rows = await conn.fetch(
            f"""
            SELECT {self.key_column} AS key, outcome, amount_minor, currency
            FROM {self.table} WHERE {self.key_column} = ANY($1::text[])
            """,
            list(keys),
        )
        return {
            row["key"]: ProviderRecord(row["outcome"], row["amount_minor"], row["currency"])
            for row in rows
        }


SIMULATED_CARD = SimulatedBooks("payment.simulated_card_charges", "idempotency_key")
"""The simulated card provider's charges (services/payment/provider.py), by idempotency
key: the purchase's request_id."""
SIMULATED_BANK = SimulatedBooks("payout.simulated_bank_transfers", "payout_id")
"""The simulated bank's transfers (services/payout/provider.py), by payout_id."""


@dataclass(frozen=True)
class Providers:
    card: ProviderLookup
    bank: ProviderLookup


BOOKS = ("simulated", "none")
"""Which books a reconciliation can read: the simulated providers' tables, or none (a
provider this command cannot ask yet, such as Stripe: its checks are not run)."""


def providers(*, card: str = "simulated", bank: str = "simulated") -> Providers:
    """The lookups of a deployment: the simulated card provider's and bank's tables, or
    `none` for a provider this command cannot ask (its checks say "not checked")."""
    for what, books in (("card", card), ("bank", bank)):
        if books not in BOOKS:
            raise ValueError(f"unknown {what} books {books!r}")
    return Providers(
        card=SIMULATED_CARD
        if card == "simulated"
        else NoRecords("not checked: --card none (this command cannot ask the card provider)"),
        bank=SIMULATED_BANK
        if bank == "simulated"
        else NoRecords("not checked: --bank none (this command cannot ask the bank)"),
    )
