"""Every SQL statement of the wallet."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from services.wallet.domain import (
    AccountKind,
    AccountRef,
    AccountState,
    Draft,
    Entry,
    Hold,
    Posting,
    SpendingLimits,
    Spent,
)
from shared.contracts import Period
from shared.db import Connection


@dataclass(frozen=True)
class LockedAccount:
    account_id: int
    balance: int
    frozen: bool

    @property
    def state(self) -> AccountState:
        return AccountState(self.balance, self.frozen)


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


@dataclass(frozen=True)
class PendingClawback:
    """A reversal that arrived before the credit it reverses."""

    payment_id: str
    user_id: str
    request_id: str
    coins: int


class WalletRepository:
    async def lock_accounts(
        self, conn: Connection, *, accounts: Iterable[AccountRef]
    ) -> dict[AccountRef, LockedAccount]:
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

    async def get_postings(
        self, conn: Connection, *, keys: Sequence[str]
    ) -> dict[str, list[Posting]]:
        """The postings of applied transactions, by idempotency key, in entry order."""
        rows = await conn.fetch(
            """
            SELECT t.idempotency_key, a.owner_id, a.kind, e.amount,
                   c.owner_id AS counter_owner, c.kind AS counter_kind
            FROM ledger_transactions t
            JOIN ledger_entries e ON e.tx_id = t.tx_id
            JOIN accounts a ON a.account_id = e.account_id
            LEFT JOIN accounts c ON c.account_id = e.counter_account_id
            WHERE t.idempotency_key = ANY($1::text[])
            ORDER BY e.entry_id
            """,
            list(keys),
        )
        postings: dict[str, list[Posting]] = {}
        for row in rows:
            counter = (
                AccountRef(row["counter_owner"], AccountKind(row["counter_kind"]))
                if row["counter_kind"]
                else None
            )
            account = AccountRef(row["owner_id"], AccountKind(row["kind"]))
            postings.setdefault(row["idempotency_key"], []).append(
                Posting(account, row["amount"], counter)
            )
        return postings

    async def add_pending_clawbacks(
        self, conn: Connection, *, clawbacks: Sequence[PendingClawback]
    ) -> None:
        """Record reversals whose credit has not arrived (a second one for a payment is a no-op)."""
        if not clawbacks:
            return
        await conn.execute(
            """
            INSERT INTO pending_clawbacks (payment_id, user_id, request_id, coins)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
            ON CONFLICT (payment_id) DO NOTHING
            """,
            [c.payment_id for c in clawbacks],
            [c.user_id for c in clawbacks],
            [c.request_id for c in clawbacks],
            [c.coins for c in clawbacks],
        )

    async def take_pending_clawbacks(
        self, conn: Connection, *, payment_ids: Sequence[str]
    ) -> list[PendingClawback]:
        """Remove and return the reversals waiting for these payments' credits."""
        rows = await conn.fetch(
            """
            DELETE FROM pending_clawbacks WHERE payment_id = ANY($1::text[])
            RETURNING payment_id, user_id, request_id, coins
            """,
            list(payment_ids),
        )
        return [PendingClawback(**dict(row)) for row in rows]

    async def set_spending_limits(
        self, conn: Connection, *, limits: Mapping[tuple[str, Period], tuple[int | None, str]]
    ) -> None:
        """Set or (with None) remove limits: (user, period) -> (max coins, request id)."""
        kept = {key: value for key, value in limits.items() if value[0] is not None}
        removed = [key for key in limits if key not in kept]
        if kept:
            await self._upsert_limits(conn, kept)
        if removed:
            await conn.execute(
                """
                DELETE FROM spending_limits s
                USING unnest($1::text[], $2::text[]) AS r(user_id, period)
                WHERE s.user_id = r.user_id AND s.period = r.period
                """,
                [user for user, _ in removed],
                [period for _, period in removed],
            )

    async def _upsert_limits(
        self, conn: Connection, limits: Mapping[tuple[str, Period], tuple[int | None, str]]
    ) -> None:
        await conn.execute(
            """
            INSERT INTO spending_limits (user_id, period, max_coins, request_id)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
            ON CONFLICT (user_id, period) DO UPDATE
                SET max_coins = excluded.max_coins, request_id = excluded.request_id,
                    updated_at = now()
            """,
            [user for user, _ in limits],
            [period for _, period in limits],
            [limit for limit, _ in limits.values()],
            [request_id for _, request_id in limits.values()],
        )

    async def add_limit_requests(
        self, conn: Connection, *, fingerprints: Mapping[str, str]
    ) -> None:
        """Record what each new spending-limit request asked: request_id -> fingerprint."""
        await conn.execute(
            """
            INSERT INTO spending_limit_requests (request_id, fingerprint)
            SELECT * FROM unnest($1::text[], $2::text[])
            ON CONFLICT (request_id) DO NOTHING
            """,
            list(fingerprints),
            list(fingerprints.values()),
        )

    async def get_limit_fingerprints(
        self, conn: Connection, *, request_ids: Sequence[str]
    ) -> dict[str, str]:
        """What the spending-limit requests recorded before asked (requests handled before
        migration 0008 have no record)."""
        rows = await conn.fetch(
            "SELECT request_id, fingerprint FROM spending_limit_requests"
            " WHERE request_id = ANY($1)",
            list(request_ids),
        )
        return {row["request_id"]: row["fingerprint"] for row in rows}

    async def get_spending_limits(
        self, conn: Connection | asyncpg.Pool, *, user_id: str
    ) -> SpendingLimits:
        rows = await conn.fetch(
            "SELECT period, max_coins FROM spending_limits WHERE user_id = $1", user_id
        )
        return SpendingLimits(**{row["period"]: row["max_coins"] for row in rows})

    async def list_spending_limits(
        self, conn: Connection, *, user_ids: Sequence[str]
    ) -> dict[str, SpendingLimits]:
        """The limits of those users who have any."""
        rows = await conn.fetch(
            "SELECT user_id, period, max_coins FROM spending_limits WHERE user_id = ANY($1)",
            list(user_ids),
        )
        found: dict[str, dict[str, int]] = {}
        for row in rows:
            found.setdefault(row["user_id"], {})[row["period"]] = row["max_coins"]
        return {user: SpendingLimits(**limits) for user, limits in found.items()}

    async def list_spent(
        self, conn: Connection, *, user_ids: Sequence[str], day: date, week: date, month: date
    ) -> dict[str, Spent]:
        """Coins each user spent since the start of the day, the week and the month."""
        if not user_ids:
            return {}
        rows = await conn.fetch(
            """
            SELECT user_id,
                   coalesce(sum(coins) FILTER (WHERE day >= $2), 0)::bigint AS day,
                   coalesce(sum(coins) FILTER (WHERE day >= $3), 0)::bigint AS week,
                   coalesce(sum(coins) FILTER (WHERE day >= $4), 0)::bigint AS month
            FROM daily_spending
            WHERE user_id = ANY($1) AND day >= least($3, $4)
            GROUP BY user_id
            """,
            list(user_ids),
            day,
            week,
            month,
        )
        return {row["user_id"]: Spent(row["day"], row["week"], row["month"]) for row in rows}

    async def add_spent(self, conn: Connection, *, day: date, coins: Mapping[str, int]) -> None:
        """Add coins spent today, per user (in user order: writers never deadlock)."""
        if not coins:
            return
        users = sorted(coins)
        await conn.execute(
            """
            INSERT INTO daily_spending (user_id, day, coins)
            SELECT user_id, $3, coins FROM unnest($1::text[], $2::bigint[]) AS s(user_id, coins)
            ON CONFLICT (user_id, day) DO UPDATE
                SET coins = daily_spending.coins + excluded.coins
            """,
            users,
            [coins[user] for user in users],
            day,
        )

    async def add_holds(self, conn: Connection, *, holds: Sequence[Hold]) -> None:
        if not holds:
            return
        await conn.execute(
            """
            INSERT INTO holds (request_id, payout_id, creator_id, units, status, deadline)
            SELECT r, p, c, u, 'open', d
            FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[])
                 AS h(r, p, c, u, d)
            """,
            [h.request_id for h in holds],
            [h.payout_id for h in holds],
            [h.creator_id for h in holds],
            [h.units for h in holds],
            [h.deadline for h in holds],
        )

    async def lock_holds(self, conn: Connection, *, request_ids: Sequence[str]) -> dict[str, Hold]:
        """The holds of these payout requests, locked (in key order) until the transaction
        ends, so a hold is checked and closed by one transaction at a time."""
        rows = await conn.fetch(
            """
            SELECT request_id, payout_id, creator_id, units, deadline, status FROM holds
            WHERE request_id = ANY($1::text[]) ORDER BY request_id FOR UPDATE
            """,
            list(request_ids),
        )
        return {
            r["request_id"]: Hold(
                r["request_id"],
                r["payout_id"],
                r["creator_id"],
                r["units"],
                r["deadline"],
                r["status"],
            )
            for r in rows
        }

    async def close_holds(
        self, conn: Connection, *, paid: Mapping[str, bool]
    ) -> list[tuple[Hold, bool]]:
        """Close open holds: request_id -> paid (posted) or not (voided). A hold already
        closed, or none at all (a payout refused before its hold), is left out."""
        rows = await conn.fetch(
            """
            UPDATE holds h
            SET status = CASE WHEN c.paid THEN 'posted' ELSE 'voided' END,
                closed_at = now()
            FROM unnest($1::text[], $2::boolean[]) AS c(request_id, paid)
            WHERE h.request_id = c.request_id AND h.status = 'open'
            RETURNING h.request_id, h.payout_id, h.creator_id, h.units, h.deadline, c.paid
            """,
            list(paid),
            list(paid.values()),
        )
        return [
            (
                Hold(r["request_id"], r["payout_id"], r["creator_id"], r["units"], r["deadline"]),
                r["paid"],
            )
            for r in rows
        ]

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


@dataclass(frozen=True)
class Violations:
    """What an audit query found: how many in all, and the first few, described."""

    count: int
    examples: list[str]


class AuditQueries:
    """The ledger audit's reads. Run them in one REPEATABLE READ transaction, so every
    check sees the same snapshot while the wallet keeps writing."""

    EXAMPLES = 10

    async def _violations(self, conn: Connection, sql: str) -> Violations:
        rows = await conn.fetch(
            f"SELECT count(*) OVER () AS n, v.what FROM ({sql}) AS v(what) LIMIT $1",
            self.EXAMPLES,
        )
        return Violations(rows[0]["n"] if rows else 0, [row["what"] for row in rows])

    async def unbalanced_transactions(self, conn: Connection) -> Violations:
        return await self._violations(
            conn,
            """
            SELECT format('transaction %s (%s): %s %s', e.tx_id, t.kind, sum(e.amount), k.unit)
            FROM ledger_entries e
            JOIN ledger_transactions t ON t.tx_id = e.tx_id
            JOIN accounts a ON a.account_id = e.account_id
            JOIN account_kinds k ON k.kind = a.kind
            GROUP BY e.tx_id, t.kind, k.unit HAVING sum(e.amount) <> 0
            UNION ALL
            SELECT format('transaction %s (%s): no entries', t.tx_id, t.kind)
            FROM ledger_transactions t
            WHERE NOT EXISTS (SELECT FROM ledger_entries e WHERE e.tx_id = t.tx_id)
            """,
        )

    async def broken_running_balances(self, conn: Connection) -> Violations:
        return await self._violations(
            conn,
            """
            SELECT format('entry %s of account %s: %s + %s <> %s',
                          entry_id, account_id, before, amount, balance_after)
            FROM (
                SELECT entry_id, account_id, amount, balance_after,
                       lag(balance_after, 1, 0::bigint)
                           OVER (PARTITION BY account_id ORDER BY entry_id) AS before
                FROM ledger_entries
            ) e
            WHERE balance_after <> before + amount
            """,
        )

    async def mismatched_balances(self, conn: Connection) -> Violations:
        return await self._violations(
            conn,
            """
            SELECT format('account %s (%s, %s): balance %s, entries sum %s, last entry %s',
                          a.account_id, a.owner_id, a.kind, a.balance,
                          coalesce(s.total, 0), coalesce(l.balance_after, 0))
            FROM accounts a
            LEFT JOIN (SELECT account_id, sum(amount) AS total
                       FROM ledger_entries GROUP BY account_id) s
                   ON s.account_id = a.account_id
            LEFT JOIN (SELECT DISTINCT ON (account_id) account_id, balance_after
                       FROM ledger_entries ORDER BY account_id, entry_id DESC) l
                   ON l.account_id = a.account_id
            WHERE a.balance <> coalesce(s.total, 0) OR a.balance <> coalesce(l.balance_after, 0)
            """,
        )

    async def frozen_mismatches(self, conn: Connection) -> Violations:
        return await self._violations(
            conn,
            """
            SELECT format('account %s (%s, %s): balance %s, frozen %s',
                          a.account_id, a.owner_id, a.kind, a.balance, a.frozen)
            FROM accounts a JOIN account_kinds k ON k.kind = a.kind
            WHERE NOT k.negative_allowed AND (a.balance < 0) <> a.frozen
            """,
        )

    async def negatives_not_by_clawback(self, conn: Connection) -> Violations:
        return await self._violations(
            conn,
            """
            SELECT format('entry %s (transaction %s, %s) took account %s (%s, %s) to %s',
                          e.entry_id, t.tx_id, t.kind, a.account_id, a.owner_id, a.kind,
                          e.balance_after)
            FROM ledger_entries e
            JOIN ledger_transactions t ON t.tx_id = e.tx_id
            JOIN accounts a ON a.account_id = e.account_id
            JOIN account_kinds k ON k.kind = a.kind
            WHERE e.amount < 0 AND e.balance_after < 0 AND NOT k.negative_allowed
              AND NOT (t.kind = 'clawback' AND a.kind = 'user_coins')
            """,
        )

    async def late_holds(self, conn: Connection) -> Violations:
        return await self._violations(
            conn,
            """
            SELECT format('hold of payout %s (%s, %s units) open past its deadline %s',
                          request_id, creator_id, units, deadline)
            FROM holds WHERE status = 'open' AND deadline < now()
            """,
        )

    async def holds_not_matching_accounts(self, conn: Connection) -> Violations:
        return await self._violations(
            conn,
            """
            SELECT format('creator %s: %s units on hold, open holds %s',
                          coalesce(a.owner_id, h.creator_id), coalesce(a.balance, 0),
                          coalesce(h.units, 0))
            FROM (SELECT owner_id, balance FROM accounts WHERE kind = 'user_diamond_hold') a
            FULL JOIN (SELECT creator_id, sum(units) AS units FROM holds
                       WHERE status = 'open' GROUP BY creator_id) h
                   ON h.creator_id = a.owner_id
            WHERE coalesce(a.balance, 0) <> coalesce(h.units, 0)
            """,
        )

    async def entry_totals(self, conn: Connection) -> dict[str, int]:
        """The sum of all entries per account kind (the ledger's own totals), over every
        owner: a platform kind's total is the sum of its shards."""
        rows = await conn.fetch(
            """
            SELECT k.kind, coalesce(sum(e.amount), 0)::bigint AS total
            FROM account_kinds k
            LEFT JOIN accounts a ON a.kind = k.kind
            LEFT JOIN ledger_entries e ON e.account_id = a.account_id
            GROUP BY k.kind
            """
        )
        return {row["kind"]: row["total"] for row in rows}

    async def user_coins_by_source(self, conn: Connection) -> dict[str, int]:
        """User coin postings against each issuance account (credits net of clawbacks)."""
        rows = await conn.fetch(
            """
            SELECT c.kind, sum(e.amount)::bigint AS total
            FROM ledger_entries e
            JOIN accounts a ON a.account_id = e.account_id
            JOIN accounts c ON c.account_id = e.counter_account_id
            WHERE a.kind = 'user_coins' AND c.kind IN ('coin_issuance', 'bonus_issuance')
            GROUP BY c.kind
            """
        )
        return {row["kind"]: row["total"] for row in rows}

    async def counts(self, conn: Connection) -> dict[str, int]:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM accounts) AS accounts,
                   (SELECT count(*) FROM ledger_transactions) AS transactions,
                   (SELECT count(*) FROM ledger_entries) AS entries,
                   (SELECT count(*) FROM accounts WHERE frozen) AS frozen_accounts,
                   (SELECT count(*) FROM pending_clawbacks) AS pending_clawbacks,
                   (SELECT count(*) FROM holds WHERE status = 'open') AS open_holds,
                   (SELECT count(DISTINCT owner_id) FROM accounts JOIN account_kinds USING (kind)
                    WHERE NOT user_owned) AS platform_shards
            """
        )
        assert row is not None
        return dict(row)
