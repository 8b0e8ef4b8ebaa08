"""Reads behind the HTTP routes (api.py): a user's balance and their history."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from services.wallet import domain
from services.wallet.domain import AccountKind, AccountState, SpendingLimits
from services.wallet.limits import SpendingLimitRepository
from shared.db import Connection, Database


@dataclass(frozen=True)
class Balance:
    user_id: str
    coins: int
    diamonds: Decimal
    diamonds_on_hold: Decimal
    frozen: bool
    spending_limits: SpendingLimits


@dataclass(frozen=True)
class HistoryItem:
    entry_id: int
    tx_id: int
    kind: str
    account_kind: str
    counter_kind: str | None
    amount: int
    balance_after: int
    request_id: str
    created_at: datetime


class ReadService:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._repository = ReadRepository()
        self._limits = SpendingLimitRepository()

    async def balance(self, *, user_id: str) -> Balance:
        accounts = await self._repository.get_accounts(self._db.pool, owner_id=user_id)
        coins = accounts.get(AccountKind.USER_COINS, AccountState(0))
        diamonds = accounts.get(AccountKind.USER_DIAMONDS, AccountState(0))
        on_hold = accounts.get(AccountKind.USER_DIAMOND_HOLD, AccountState(0))
        return Balance(
            user_id=user_id,
            coins=coins.balance,
            diamonds=domain.diamonds_of(diamonds.balance),
            diamonds_on_hold=domain.diamonds_of(on_hold.balance),
            frozen=coins.frozen,
            spending_limits=await self._limits.get_spending_limits(self._db.pool, user_id=user_id),
        )

    async def history(
        self, *, user_id: str, before_entry_id: int | None, limit: int
    ) -> tuple[list[HistoryItem], int | None]:
        """A page of the user's entries, newest first, and the cursor of the next page
        (None on the last page)."""
        items = await self._repository.list_history(
            self._db.pool, owner_id=user_id, before_entry_id=before_entry_id, limit=limit + 1
        )
        more = len(items) > limit
        return items[:limit], items[limit - 1].entry_id if more else None


class ReadRepository:
    """The SQL of the reads: accounts and entries of one owner."""

    async def get_accounts(
        self, conn: Connection | asyncpg.Pool, *, owner_id: str
    ) -> dict[AccountKind, AccountState]:
        rows = await conn.fetch(
            "SELECT kind, balance, frozen FROM accounts WHERE owner_id = $1", owner_id
        )
        return {
            AccountKind(row["kind"]): AccountState(row["balance"], row["frozen"]) for row in rows
        }

    async def list_history(
        self,
        conn: Connection | asyncpg.Pool,
        *,
        owner_id: str,
        before_entry_id: int | None,
        limit: int,
    ) -> list[HistoryItem]:
        """The owner's entries, newest first, strictly older than the cursor."""
        rows = await conn.fetch(
            """
            SELECT e.entry_id, e.tx_id, t.kind, a.kind AS account_kind,
                   c.kind AS counter_kind, e.amount, e.balance_after, t.request_id,
                   e.created_at
            FROM accounts a
            JOIN ledger_entries e ON e.account_id = a.account_id
            JOIN ledger_transactions t ON t.tx_id = e.tx_id
            LEFT JOIN accounts c ON c.account_id = e.counter_account_id
            WHERE a.owner_id = $1 AND a.kind IN (SELECT kind FROM account_kinds WHERE user_owned)
              AND ($2::bigint IS NULL OR e.entry_id < $2)
            ORDER BY e.entry_id DESC
            LIMIT $3
            """,
            owner_id,
            before_entry_id,
            limit,
        )
        return [HistoryItem(**dict(row)) for row in rows]
