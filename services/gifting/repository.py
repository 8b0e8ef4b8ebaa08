"""Every SQL statement of the gifting service."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from services.gifting.domain import Gift, GiftOrder
from shared.db import Connection


class Settled(NamedTuple):
    """A gift request that just got its outcome, and when it had arrived."""

    order: GiftOrder
    received_at: datetime


def _order(row: asyncpg.Record) -> GiftOrder:
    return GiftOrder(
        request_id=row["request_id"],
        sender_id=row["sender_id"],
        creator_id=row["creator_id"],
        gift_id=row["gift_id"],
        quantity=int(row["quantity"]),
        stream_id=row["stream_id"],
        video_id=row["video_id"],
        fingerprint=row["fingerprint"],
        status=row["status"],
        reason=row["reason"],
        coins=row["coins"],
        diamonds=row["diamonds"],
    )


_COLUMNS = """request_id, sender_id, creator_id, gift_id, quantity, stream_id, video_id,
              fingerprint, status, reason, coins, diamonds"""


_SETTLE = f"""
UPDATE gift_requests g
SET status = CASE WHEN o.reason IS NULL THEN 'sent' ELSE 'rejected' END,
    reason = o.reason, decided_at = clock_timestamp()
FROM unnest($1::text[], $2::text[]) AS o(request_id, reason)
-- IS TRUE: each gift through its primary key, never through the partial index of pending
-- gifts (docs/development.md, "Tables that are also queues").
WHERE g.request_id = o.request_id AND (g.status = 'pending') IS TRUE
RETURNING {", ".join(f"g.{c.strip()}" for c in _COLUMNS.split(","))}, g.created_at
"""


class GiftingRepository:
    async def list_active_gifts(self, conn: Connection | asyncpg.Pool) -> list[Gift]:
        rows = await conn.fetch(
            "SELECT gift_id, name, coins FROM gifts WHERE active ORDER BY coins, gift_id"
        )
        return [Gift(row["gift_id"], row["name"], row["coins"]) for row in rows]

    async def get_gifts(self, conn: Connection, *, gift_ids: Sequence[str]) -> dict[str, Gift]:
        """These gifts of the catalog, retired ones included."""
        rows = await conn.fetch(
            "SELECT gift_id, name, coins, active FROM gifts WHERE gift_id = ANY($1)",
            list(gift_ids),
        )
        return {row["gift_id"]: Gift(**dict(row)) for row in rows}

    async def get_by_request_ids(
        self, conn: Connection, *, request_ids: Sequence[str]
    ) -> dict[str, GiftOrder]:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM gift_requests WHERE request_id = ANY($1)", list(request_ids)
        )
        return {row["request_id"]: _order(row) for row in rows}

    async def lock_by_request_ids(
        self, conn: Connection, *, request_ids: Sequence[str]
    ) -> dict[str, GiftOrder]:
        """These requests, locked (in key order) until the transaction ends, so each is
        checked and settled by one transaction at a time."""
        rows = await conn.fetch(
            f"""
            SELECT {_COLUMNS} FROM gift_requests WHERE request_id = ANY($1)
            ORDER BY request_id FOR UPDATE
            """,
            list(request_ids),
        )
        return {row["request_id"]: _order(row) for row in rows}

    async def add_new(
        self, conn: Connection, *, orders: Sequence[GiftOrder], requested_at: Sequence[datetime]
    ) -> set[str]:
        """Record the requests not recorded yet; returns their request ids."""
        if not orders:
            return set()
        rows = await conn.fetch(
            f"""
            INSERT INTO gift_requests ({_COLUMNS}, requested_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[],
                                 $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                                 $11::bigint[], $12::numeric[], $13::timestamptz[])
            ON CONFLICT (request_id) DO NOTHING
            RETURNING request_id
            """,
            [o.request_id for o in orders],
            [o.sender_id for o in orders],
            [o.creator_id for o in orders],
            [o.gift_id for o in orders],
            [o.quantity for o in orders],
            [o.stream_id for o in orders],
            [o.video_id for o in orders],
            [o.fingerprint for o in orders],
            [o.status for o in orders],
            [o.reason for o in orders],
            [o.coins for o in orders],
            [o.diamonds for o in orders],
            list(requested_at),
        )
        return {row["request_id"] for row in rows}

    async def settle_many(
        self, conn: Connection, *, outcomes: Mapping[str, str | None]
    ) -> list[Settled]:
        """Give pending requests their outcome: request_id -> None (sent) or the reason
        (rejected). Requests already settled are left alone and not returned, which makes
        a repeated answer harmless."""
        rows = await conn.fetch(
            _SETTLE,
            list(outcomes),
            list(outcomes.values()),
        )
        return [Settled(_order(row), row["created_at"]) for row in rows]

    async def add_to_leaderboards(
        self, conn: Connection, *, coins: Mapping[tuple[str, str], int]
    ) -> None:
        """Add coins given: (stream_id, sender_id) -> coins, in key order (no deadlocks)."""
        if not coins:
            return
        keys = sorted(coins)
        await conn.execute(
            """
            INSERT INTO leaderboard_entries (stream_id, sender_id, coins)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
            ON CONFLICT (stream_id, sender_id) DO UPDATE
                SET coins = leaderboard_entries.coins + excluded.coins, updated_at = now()
            """,
            [stream for stream, _ in keys],
            [sender for _, sender in keys],
            [coins[key] for key in keys],
        )

    async def list_leaderboard(
        self, conn: Connection | asyncpg.Pool, *, stream_id: str, limit: int
    ) -> list[tuple[str, int]]:
        """The stream's top senders by coins given: (sender_id, coins), most first."""
        rows = await conn.fetch(
            """
            SELECT sender_id, coins FROM leaderboard_entries
            WHERE stream_id = $1 ORDER BY coins DESC, sender_id LIMIT $2
            """,
            stream_id,
            limit,
        )
        return [(row["sender_id"], row["coins"]) for row in rows]
