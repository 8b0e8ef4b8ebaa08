"""The base every wallet use case stands on: the ledger's SQL (accounts locked in one
order, transactions and entries written in one statement each), posting drafts against
locked balances, and the inbox claim of the requests the wallet answers.

The use cases, one module each: purchases.py (credits, clawbacks), gifts.py (gift
debits), holds.py (payout holds), limits.py (spending limits), reads.py (balance,
history); service.py puts them together.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, TypeVar

from services.wallet import domain
from services.wallet.domain import AccountKind, AccountRef, AccountState, Draft, Entry, Ledger
from shared import inbox
from shared.contracts import (
    DiamondsHoldRequested,
    GiftDebitRequested,
    Message,
    SpendingLimitRequested,
)
from shared.db import Connection

Applied = list[tuple[Draft, list[Entry]]]
"""Drafts in the order they were applied, each with the entries it wrote."""


class LockedAccount(NamedTuple):
    """An account this transaction holds locked, as it was read (a NamedTuple, like the
    ledger's value objects: a batch builds one per account)."""

    account_id: int
    balance: int
    frozen: bool

    @property
    def state(self) -> AccountState:
        return AccountState(self.balance, self.frozen)


Locked = dict[AccountRef, LockedAccount]


class LedgerRepository:
    """The SQL of accounts, ledger transactions and their entries."""

    async def lock_accounts(self, conn: Connection, *, accounts: Iterable[AccountRef]) -> Locked:
        """Create missing accounts, then lock all of them in account-id order."""
        refs = sorted(set(accounts))
        owners, kinds = [r.owner_id for r in refs], [str(r.kind) for r in refs]
        await conn.execute(
            """
            INSERT INTO accounts (owner_id, kind)
            SELECT * FROM unnest($1::text[], $2::text[]) ORDER BY 1, 2
            ON CONFLICT (owner_id, kind) DO NOTHING
            """,
            owners,
            kinds,
        )
        # One fixed lock order for every writer: no two batches can deadlock. Any total
        # order will do, so platform shards created later (higher ids than many users)
        # need no special place in it (the INSERT above creates in one order too).
        rows = await conn.fetch(
            """
            SELECT a.account_id, a.owner_id, a.kind, a.balance, a.frozen
            FROM accounts a JOIN unnest($1::text[], $2::text[]) AS w(owner_id, kind)
                 USING (owner_id, kind)
            ORDER BY a.account_id
            FOR UPDATE OF a
            """,
            owners,
            kinds,
        )
        return {
            AccountRef(row["owner_id"], AccountKind(row["kind"])): LockedAccount(
                row["account_id"], row["balance"], row["frozen"]
            )
            for row in rows
        }

    async def applied_keys(self, conn: Connection, *, keys: Sequence[str]) -> set[str]:
        rows = await conn.fetch(
            "SELECT idempotency_key FROM ledger_transactions WHERE idempotency_key = ANY($1)",
            list(keys),
        )
        return {row["idempotency_key"] for row in rows}

    async def add_transactions(
        self,
        conn: Connection,
        *,
        applied: Sequence[tuple[Draft, list[Entry]]],
        accounts: Mapping[AccountRef, LockedAccount],
        states: Mapping[AccountRef, AccountState],
    ) -> None:
        """Write transactions and their entries, then the accounts' new states."""
        tx_by_key = await self._add_headers(conn, [draft for draft, _ in applied])
        rows = [
            (
                tx_by_key[draft.idempotency_key],
                accounts[e.account].account_id,
                e.amount,
                e.balance_after,
                accounts[e.counter].account_id if e.counter else None,
            )
            for draft, entries in applied
            for e in entries
        ]
        # All entries in one statement: the entry trigger checks the batch once. Ids
        # follow the array order (WITH ORDINALITY), so each account's entries keep the
        # order their balance_after values were computed in.
        await conn.execute(
            """
            INSERT INTO ledger_entries (tx_id, account_id, amount, balance_after,
                                        counter_account_id)
            SELECT tx_id, account_id, amount, balance_after, counter_account_id
            FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
                 WITH ORDINALITY
                 AS e(tx_id, account_id, amount, balance_after, counter_account_id, n)
            ORDER BY n
            """,
            *(list(column) for column in zip(*rows, strict=True)),
        )
        touched = {e.account for _, entries in applied for e in entries}
        await self._set_states(conn, {accounts[ref].account_id: states[ref] for ref in touched})

    async def _add_headers(self, conn: Connection, drafts: Sequence[Draft]) -> dict[str, int]:
        rows = await conn.fetch(
            """
            INSERT INTO ledger_transactions (kind, idempotency_key, request_id)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
            RETURNING tx_id, idempotency_key
            """,
            [str(d.kind) for d in drafts],
            [d.idempotency_key for d in drafts],
            [d.request_id for d in drafts],
        )
        return {row["idempotency_key"]: row["tx_id"] for row in rows}

    async def _set_states(self, conn: Connection, states: Mapping[int, AccountState]) -> None:
        await conn.execute(
            """
            UPDATE accounts a SET balance = n.balance, frozen = n.frozen
            FROM unnest($1::bigint[], $2::bigint[], $3::boolean[]) AS n(account_id, balance, frozen)
            WHERE a.account_id = n.account_id
            """,
            list(states),
            [state.balance for state in states.values()],
            [state.frozen for state in states.values()],
        )


class Bookkeeper:
    """Posts the use cases' drafts: locks accounts, skips what the ledger has applied,
    applies drafts in order against the locked balances and writes them."""

    def __init__(self, *, shards: int) -> None:
        # The partitions of the wallet's input topics (TOPIC_PARTITIONS): a transaction
        # books the platform's side in the shard of its message's partition.
        self._shards = shards
        self._repository = LedgerRepository()

    def shard(self, message: Message) -> int:
        """The platform shard of the partition `message` was published to (by its key)."""
        return domain.shard_of(message.key(), self._shards)

    async def lock(
        self, conn: Connection, accounts: Iterable[AccountRef], locked: Locked | None = None
    ) -> Locked:
        """Lock (creating them if needed) the accounts not locked yet by this transaction
        (`locked`); returns every account the transaction holds."""
        locked = locked or {}
        missing = set(accounts) - locked.keys()
        if missing:
            locked = locked | await self._repository.lock_accounts(conn, accounts=missing)
        return locked

    async def not_applied(self, conn: Connection, drafts: Sequence[Draft]) -> list[Draft]:
        """The drafts, once per idempotency key, that the ledger has not applied yet."""
        unique = list({draft.idempotency_key: draft for draft in drafts}.values())
        if not unique:
            return []
        done = await self._repository.applied_keys(
            conn, keys=[draft.idempotency_key for draft in unique]
        )
        return [draft for draft in unique if draft.idempotency_key not in done]

    async def post(
        self, conn: Connection, drafts: Sequence[Draft], locked: Locked | None = None
    ) -> Applied:
        """Apply drafts in order against locked balances and write them.

        `locked`: accounts this transaction already holds (they are not locked twice).
        """
        if not drafts:
            return []
        locked = await self.lock(conn, {ref for d in drafts for ref in d.accounts}, locked)
        ledger = ledger_of(locked)
        applied = [(draft, ledger.apply(draft)) for draft in drafts]
        await self.write(conn, applied, locked, ledger)
        return applied

    async def write(
        self, conn: Connection, applied: Applied, locked: Locked, ledger: Ledger
    ) -> None:
        """Write what a use case applied to `ledger` itself (opened on `locked`)."""
        if applied:
            await self._repository.add_transactions(
                conn,
                applied=applied,
                accounts=locked,
                states={ref: ledger.state(ref) for ref in locked},
            )


def ledger_of(locked: Locked) -> Ledger:
    """A running ledger on the balances of the locked accounts."""
    return Ledger({ref: account.state for ref, account in locked.items()})


R = TypeVar("R", SpendingLimitRequested, GiftDebitRequested, DiamondsHoldRequested)


async def claim_requests(conn: Connection, topic: str, requests: Sequence[R]) -> list[R]:
    """The requests this transaction claims in the inbox, keyed by request_id: a request
    is applied and answered once, whatever is redelivered; in order, the first of each."""
    fresh = await inbox.claim_many(conn, topic=topic, message_ids=[r.request_id for r in requests])
    first: dict[str, R] = {}
    for request in requests:
        if request.request_id in fresh:
            first.setdefault(request.request_id, request)
    return list(first.values())
