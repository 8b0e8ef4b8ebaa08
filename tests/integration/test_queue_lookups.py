"""Statements that take waiting rows by key (pending gifts and purchases, open holds)
read their batch, not the queue, whatever the planner's statistics believe about it
(docs/development.md, "Tables that are also queues").

Each table is copied (with its indexes) into a schema of the test's own and given
100,000 rows done with; its statistics are taken while nothing waits, as autoanalyze
often finds it; then 5,000 rows wait and
one batch of 100 of them is taken by the service's own repository method. Before the
lookups were written to keep off the partial index, each such batch read all 5,000.
"""

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from services.gifting.repository import GiftingRepository
from services.payment.repository import PaymentRepository
from services.wallet.holds import HoldRepository
from tests.support import unique

pytestmark = pytest.mark.integration

DONE = 100_000  # rows done with: most of such a table
WAITING = 5_000
BATCH = 100

_GIFTS = """
INSERT INTO gift_requests (request_id, sender_id, creator_id, gift_id, quantity, stream_id,
                           fingerprint, status, reason, requested_at)
SELECT 'r' || i, 's' || i, 'c', 'rose', 1, 'stream', 'f' || i, $2, NULL, now()
FROM generate_series($1::int, $1::int + $3::int - 1) AS i
"""
_PURCHASES = """
INSERT INTO purchases (request_id, user_id, package_id, price_minor, currency,
                       payment_method, status, reason, requested_at)
SELECT 'r' || i, 'u' || i, 'coins_70', 99, 'USD', 'pm_card_ok', $2, NULL, now()
FROM generate_series($1::int, $1::int + $3::int - 1) AS i
"""
_HOLDS = """
INSERT INTO holds (request_id, payout_id, creator_id, units, status, deadline)
SELECT 'r' || i, 'p' || i, 'c' || i, 10, $2, now() + interval '1 hour'
FROM generate_series($1::int, $1::int + $3::int - 1) AS i
"""
_DONE = {"gift_requests": "sent", "purchases": "completed", "holds": "posted"}
_WAITS = {"gift_requests": "pending", "purchases": "pending", "holds": "open"}

Take = Callable[[asyncpg.Connection, list[str]], Awaitable[Any]]


async def _settle_gifts(conn: asyncpg.Connection, ids: list[str]) -> Any:
    return await GiftingRepository().settle_many(conn, outcomes=dict.fromkeys(ids))


async def _settle_purchases(conn: asyncpg.Connection, ids: list[str]) -> Any:
    nothing: list[str | None] = [None] * len(ids)
    return await PaymentRepository().settle_many(
        conn,
        request_ids=ids,
        statuses=["completed"] * len(ids),
        reasons=nothing,
        payment_ids=[f"pay-{i}" for i in ids],
        provider_references=nothing,
    )


async def _touch_purchases(conn: asyncpg.Connection, ids: list[str]) -> Any:
    return await PaymentRepository().touch_pending(conn, request_ids=ids)


async def _close_holds(conn: asyncpg.Connection, ids: list[str]) -> Any:
    return await HoldRepository().close_holds(conn, paid=dict.fromkeys(ids, True))


@pytest.mark.parametrize(
    ("source", "fill", "take"),
    [
        ("gifting.gift_requests", _GIFTS, _settle_gifts),
        ("payment.purchases", _PURCHASES, _settle_purchases),
        ("payment.purchases", _PURCHASES, _touch_purchases),
        ("wallet.holds", _HOLDS, _close_holds),
    ],
    ids=["gifting settle", "payment settle", "payment touch", "wallet close holds"],
)
async def test_queue_lookups_read_their_batch_not_the_queue(
    database_url: str, source: str, fill: str, take: Take
) -> None:
    table = source.split(".")[1]
    schema = unique("queue").replace("-", "_")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"CREATE SCHEMA {schema}; SET search_path = {schema};"
            f"CREATE TABLE {table} (LIKE {source} INCLUDING ALL)"
        )
        await conn.execute(fill, 1, _DONE[table], DONE)
        await conn.execute(f"ANALYZE {table}")  # nothing waits, as far as it knows
        await conn.execute(fill, DONE + 1, _WAITS[table], WAITING)
        batch = [f"r{DONE + 1 + i * 37}" for i in range(BATCH)]
        async with conn.transaction():
            taken = await take(conn, batch)
            read = await conn.fetchval(
                """
                SELECT coalesce(t.seq_tup_read, 0) + coalesce(t.idx_tup_fetch, 0)
                FROM pg_stat_xact_user_tables t WHERE t.relid = $1::regclass
                """,
                f"{schema}.{table}",
            )
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
    assert len(taken) == BATCH
    assert read <= 2 * BATCH, f"{read} rows read for a batch of {BATCH}"
