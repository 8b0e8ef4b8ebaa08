"""The ledger audit's reads (audit.py): every query only the audit runs."""

from dataclasses import dataclass

from shared.db import Connection


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
