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


class SimulatedCardBooks:
    """The simulated card provider's books: the table `payment.simulated_card_charges`,
    which services/payment/provider.py keeps as the provider's own records (outside the
    payment service's transactions), by idempotency key (the purchase's request_id)."""

    unavailable: str | None = None

    async def find(
        self, conn: asyncpg.Connection, keys: Sequence[str]
    ) -> dict[str, ProviderRecord]:
        rows = await conn.fetch(
            """
            SELECT idempotency_key, outcome, amount_minor, currency
            FROM payment.simulated_card_charges WHERE idempotency_key = ANY($1::text[])
            """,
            list(keys),
        )
        return {
            row["idempotency_key"]: ProviderRecord(
                row["outcome"], row["amount_minor"], row["currency"]
            )
            for row in rows
        }


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
        card=SimulatedCardBooks()
        if card == "simulated"
        else NoRecords("not checked: --card none (this command cannot ask the card provider)"),
        bank=SimulatedBankBooks()
        if bank == "simulated"
        else NoRecords("not checked: --bank none (this command cannot ask the bank)"),
    )
