"""Every SQL statement of the payout service."""

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

from services.payout.domain import Creator, Payout
from shared.contracts import CreatorUpdated
from shared.db import Connection
from shared.money import Money

_COLUMNS = """request_id, payout_id, creator_id, diamonds, status, reason, fingerprint,
              amount_minor, currency, payout_method, usd_minor, created_at"""


def _payout(row: asyncpg.Record) -> Payout:
    amount = (
        Money(amount_minor=row["amount_minor"], currency=row["currency"])
        if row["currency"] is not None
        else None
    )
    return Payout(
        request_id=row["request_id"],
        payout_id=row["payout_id"],
        creator_id=row["creator_id"],
        diamonds=int(row["diamonds"]),
        status=row["status"],
        fingerprint=row["fingerprint"],
        reason=row["reason"],
        amount=amount,
        payout_method=row["payout_method"],
        usd_minor=row["usd_minor"],
        created_at=row["created_at"],
    )


class PayoutRepository:
    async def upsert_creators(self, conn: Connection, *, updates: Sequence[CreatorUpdated]) -> None:
        """Keep the newest state of each creator (by the update's occurred_at)."""
        await conn.execute(
            """
            INSERT INTO creators AS c (creator_id, verified, payout_method, currency, updated_at)
            SELECT * FROM unnest($1::text[], $2::boolean[], $3::text[], $4::text[],
                                 $5::timestamptz[])
            ON CONFLICT (creator_id) DO UPDATE
                SET verified = excluded.verified, payout_method = excluded.payout_method,
                    currency = excluded.currency, updated_at = excluded.updated_at
                WHERE c.updated_at <= excluded.updated_at
            """,
            [u.creator_id for u in updates],
            [u.verified for u in updates],
            [u.payout_method for u in updates],
            [u.currency for u in updates],
            [u.occurred_at for u in updates],
        )

    async def get_creators(
        self, conn: Connection, *, creator_ids: Sequence[str]
    ) -> dict[str, Creator]:
        rows = await conn.fetch(
            """
            SELECT creator_id, verified, payout_method, currency FROM creators
            WHERE creator_id = ANY($1)
            """,
            list(creator_ids),
        )
        return {row["creator_id"]: Creator(**dict(row)) for row in rows}

    async def paid_since(
        self, conn: Connection, *, creator_ids: Sequence[str], since: datetime
    ) -> dict[str, int]:
        """US cents paid or being paid to each creator since `since` (failures excluded).

        The creators' rows are locked first, so two batches of one creator's payouts
        (a rebalance) count one after the other."""
        await conn.execute(
            "SELECT 1 FROM creators WHERE creator_id = ANY($1) ORDER BY creator_id FOR UPDATE",
            list(creator_ids),
        )
        rows = await conn.fetch(
            """
            SELECT creator_id, sum(usd_minor)::bigint AS paid FROM payouts
            WHERE creator_id = ANY($1) AND created_at >= $2 AND status <> 'failed'
            GROUP BY creator_id
            """,
            list(creator_ids),
            since,
        )
        return {row["creator_id"]: row["paid"] for row in rows}

    async def add_new(
        self,
        conn: Connection,
        *,
        payouts: Sequence[Payout],
        requested_at: Sequence[datetime],
        hold_deadline: datetime,
    ) -> set[str]:
        """Record the requests not recorded yet; returns their request ids."""
        if not payouts:
            return set()
        rows = await conn.fetch(
            """
            INSERT INTO payouts (request_id, payout_id, creator_id, diamonds, status, reason,
                                 fingerprint, amount_minor, currency, payout_method, usd_minor,
                                 requested_at, hold_deadline)
            SELECT *, $13::timestamptz
            FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[], $6::text[],
                        $7::text[], $8::bigint[], $9::text[], $10::text[], $11::bigint[],
                        $12::timestamptz[])
            ON CONFLICT (request_id) DO NOTHING
            RETURNING request_id
            """,
            [p.request_id for p in payouts],
            [p.payout_id for p in payouts],
            [p.creator_id for p in payouts],
            [p.diamonds for p in payouts],
            [p.status for p in payouts],
            [p.reason for p in payouts],
            [p.fingerprint for p in payouts],
            [p.amount.amount_minor if p.amount else None for p in payouts],
            [p.amount.currency if p.amount else None for p in payouts],
            [p.payout_method for p in payouts],
            [p.usd_minor for p in payouts],
            list(requested_at),
            hold_deadline,
        )
        return {row["request_id"] for row in rows}

    async def get_by_request_ids(
        self, conn: Connection | asyncpg.Pool, *, request_ids: Sequence[str]
    ) -> dict[str, Payout]:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM payouts WHERE request_id = ANY($1)", list(request_ids)
        )
        return {row["request_id"]: _payout(row) for row in rows}

    async def lock_by_request_ids(
        self, conn: Connection, *, request_ids: Sequence[str]
    ) -> dict[str, Payout]:
        """These payouts, locked (in key order) until the transaction ends, so each is
        checked and moved by one transaction at a time."""
        rows = await conn.fetch(
            f"""
            SELECT {_COLUMNS} FROM payouts WHERE request_id = ANY($1)
            ORDER BY request_id FOR UPDATE
            """,
            list(request_ids),
        )
        return {row["request_id"]: _payout(row) for row in rows}

    async def move(
        self,
        conn: Connection,
        *,
        changes: Mapping[str, tuple[str, str | None, str | None]],
        from_statuses: Sequence[str],
    ) -> list[Payout]:
        """Move payouts still in one of `from_statuses`: request_id -> (status, reason,
        provider reference). Returns those moved; the rest had moved on already."""
        rows = await conn.fetch(
            f"""
            UPDATE payouts p
            SET status = c.status, reason = c.reason,
                provider_reference = coalesce(c.reference, p.provider_reference),
                updated_at = clock_timestamp()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                 AS c(request_id, status, reason, reference)
            WHERE p.request_id = c.request_id AND p.status = ANY($5::text[])
            RETURNING {", ".join(f"p.{c.strip()}" for c in _COLUMNS.split(","))}
            """,
            list(changes),
            [status for status, _, _ in changes.values()],
            [reason for _, reason, _ in changes.values()],
            [reference for _, _, reference in changes.values()],
            list(from_statuses),
        )
        return [_payout(row) for row in rows]

    async def claim_in_doubt(
        self, conn: Connection, *, stale_before: datetime, limit: int
    ) -> list[Payout]:
        """Payouts whose provider outcome is unknown, or still being paid long after
        their process should have finished (it died mid-call), locked for this
        transaction; other replicas skip them."""
        rows = await conn.fetch(
            f"""
            SELECT {_COLUMNS} FROM payouts
            WHERE status = 'unknown' OR (status = 'held' AND updated_at < $1)
            ORDER BY updated_at LIMIT $2
            FOR UPDATE SKIP LOCKED
            """,
            stale_before,
            limit,
        )
        return [_payout(row) for row in rows]

    async def list_by_creator(
        self, conn: asyncpg.Pool, *, creator_id: str, limit: int
    ) -> list[Payout]:
        rows = await conn.fetch(
            f"""
            SELECT {_COLUMNS} FROM payouts WHERE creator_id = $1
            ORDER BY created_at DESC, request_id LIMIT $2
            """,
            creator_id,
            limit,
        )
        return [_payout(row) for row in rows]
