"""The outbox relay against real Kafka and PostgreSQL: relays in parallel on shards, each
key in order, records in partition batches, commits published at once, no row twice,
crashes survived."""

import asyncio
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from devstack import Endpoints
from services.wallet.main import create_app
from services.wallet.settings import WalletSettings
from shared import outbox, topics
from shared.broker import outbox_publisher, relay_producer
from shared.contracts import Event, PurchaseCompleted
from shared.db import Database
from shared.kafka_admin import ensure_topics
from shared.migrations import KIT_MIGRATIONS
from shared.money import Money
from shared.settings import ServiceSettings
from tests.support import TopicReader, eventually, in_process, publish, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class RelaySettings(ServiceSettings):
    pass


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    """A schema of its own holding only the kit's inbox and outbox tables."""
    name = unique("relay").replace("-", "_")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE SCHEMA {name}; SET search_path = {name}")
        for sql in sorted(KIT_MIGRATIONS.glob("*.sql")):
            await conn.execute(sql.read_text())
        yield name
        await conn.execute(f"DROP SCHEMA {name} CASCADE")
    finally:
        await conn.close()


async def unpublished(database_url: str, schema: str) -> int:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
    finally:
        await conn.close()


@dataclass
class Relay:
    """A relay with its own producer and pool, and what it did."""

    db: Database
    registry: CollectorRegistry
    relay: outbox.OutboxRelay = field(init=False)
    records: int = 0  # records handed to `producer.send_batch`
    batches: int = 0  # `producer.send_batch` calls
    sends: int = 0  # `producer.send` calls (one per record: never, since batches)
    # (started, finished, keys) of each publish, for the parallel test
    publishes: list[tuple[float, float, set[bytes]]] = field(default_factory=list)

    def metric(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0


async def start_relay(
    stack: AsyncExitStack,
    infra: Any,
    database_url: str,
    schema: str,
    batch_size: int,
    *,
    publish_takes_s: float = 0.0,
    poll_interval_s: float = 0.05,
) -> Relay:
    registry = CollectorRegistry()
    producer = relay_producer(RelaySettings(kafka=infra.kafka(), database_url=database_url))
    await producer.start()
    stack.push_async_callback(producer.stop)
    db = Database(database_url, schema=schema)
    await db.open()
    stack.push_async_callback(db.close)
    spied = Relay(db, registry)
    _spy_on(producer, spied)
    publish = outbox_publisher(producer)

    async def slow_publish(records: Sequence[outbox.OutboxRecord]) -> None:
        started = time.monotonic()
        await publish(records)
        await asyncio.sleep(publish_takes_s)  # as a slow broker would
        spied.publishes.append((started, time.monotonic(), {r.key for r in records}))

    spied.relay = outbox.OutboxRelay(
        lambda: db.pool,
        schema=schema,
        publish=slow_publish,
        metrics=outbox.RelayMetrics(registry),
        batch_size=batch_size,
        poll_interval_s=poll_interval_s,
    )
    return spied


def _spy_on(producer: AIOKafkaProducer, relay: Relay) -> None:
    send, send_batch = producer.send, producer.send_batch

    async def counted_send(*args: Any, **kwargs: Any) -> Any:
        relay.sends += 1
        return await send(*args, **kwargs)

    async def counted_send_batch(batch: Any, topic: str, *, partition: int) -> Any:
        relay.batches += 1
        relay.records += batch.record_count()
        return await send_batch(batch, topic, partition=partition)

    producer.send = counted_send
    producer.send_batch = counted_send_batch


async def add_rows(database_url: str, schema: str, topic: str, *, rows: int, keys: int) -> None:
    """`rows` events on `topic` numbered 1.. (`seq`), for `keys` keys in turn."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        await conn.execute(
            """
            INSERT INTO outbox (topic, key, event_id, payload)
            SELECT $1, 'k' || (i % $3), 'e' || i,
                   convert_to(json_build_object('seq', i, 'key', 'k' || (i % $3))::text, 'UTF8')
            FROM generate_series(1, $2) AS i
            """,
            topic,
            rows,
            keys,
        )
    finally:
        await conn.close()


async def shard_of_keys(database_url: str, schema: str) -> dict[bytes, int]:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        # The outbox's own formula (kit-0002), over the rows waiting and those published.
        found = await conn.fetch(
            """
            SELECT DISTINCT key, (hashtext(key) & 2147483647) % outbox_shards() AS shard
            FROM (SELECT key FROM outbox UNION ALL SELECT key FROM outbox_published) AS k
            """
        )
    finally:
        await conn.close()
    return {row["key"].encode(): row["shard"] for row in found}


@asynccontextmanager
async def relaying(relays: list[Relay]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(r.relay.run()) for r in relays]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def read_everything(infra: Any, reader: TopicReader, topic: str) -> list[dict[str, Any]]:
    """The JSON bodies of every record on `topic`, duplicates included.

    An end marker in every partition: once the reader has all six, it has read
    everything the relays wrote."""
    await publish_end_markers(infra, topic, partitions=PARTITIONS)
    await eventually(lambda: _markers_seen(reader, PARTITIONS), timeout_s=30)
    return [json.loads(r.value) for r in reader.records if r.value != END_MARKER]


PARTITIONS = 6


async def test_three_relays_publish_every_row_once_each_key_in_order_in_partition_batches(
    infra: Any, database_url: str, schema: str
) -> None:
    topic = unique("test.relay")
    await ensure_topics(infra.kafka(), partitions=PARTITIONS, replication_factor=1, topics=[topic])
    rows = 6000
    await add_rows(database_url, schema, topic, rows=rows, keys=300)

    async with AsyncExitStack() as stack, TopicReader(infra, (topic,)) as reader:
        relays = [await start_relay(stack, infra, database_url, schema, 100) for _ in range(3)]
        async with relaying(relays):
            await eventually(lambda: _none_left(database_url, schema), timeout_s=60)
        bodies = await read_everything(infra, reader, topic)

    assert len(bodies) == rows
    assert len({body["seq"] for body in bodies}) == rows
    by_key: dict[str, list[int]] = defaultdict(list)
    for body in bodies:
        by_key[body["key"]].append(body["seq"])
    # Records of one key share a partition; the reader sees each partition in order.
    assert len(by_key) == 300
    assert all(seqs == sorted(seqs) for seqs in by_key.values())
    # Every relay took part, and records went to the broker in batches per partition.
    assert all(r.metric("coinstream_outbox_published_total") > 0 for r in relays)
    assert sum(r.records for r in relays) == rows
    assert sum(r.sends for r in relays) == 0
    batches = sum(r.batches for r in relays)
    relay_batches = sum(r.metric("coinstream_outbox_batches_total") for r in relays)
    # A relay batch of up to 100 rows spans at most six partitions: a record batch each.
    assert batches <= relay_batches * PARTITIONS
    assert rows / batches >= 5, (rows, batches, relay_batches)


@pytest.mark.parametrize(
    "statistics",
    ["taken when the outbox was empty", "taken when a batch waited", "up to date"],
)
async def test_a_claim_reads_its_batch_not_the_backlog(
    database_url: str, schema: str, statistics: str
) -> None:
    """20,000 unpublished rows behind a batch: the claim's statements read the batch and
    one row per shard, whatever the planner believes about the queue. (Statistics taken
    when every row was published, as autoanalyze found them when relays marked rows in
    place, once made each claim hash the whole backlog: 17,000 rows read for a batch of
    500 on a stack under load. Statistics taken when a batch waited, as autoanalyze
    finds them on an outbox of waiting rows only, made the take walk an index in id
    order and filter each shard's rows out of all of them: 12,000 rows read per shard.)"""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        if statistics == "taken when the outbox was empty":
            await conn.execute("ANALYZE outbox")
        elif statistics == "taken when a batch waited":
            await add_rows(database_url, schema, "relay.read", rows=500, keys=500)
            await conn.execute("ANALYZE outbox")
        await add_rows(database_url, schema, "relay.read", rows=20_000, keys=1_000)
        if statistics == "up to date":
            await conn.execute("ANALYZE outbox")
        async with conn.transaction():
            await conn.execute(outbox._BY_KEY)
            shards_plan = await _explain(
                conn, outbox._TAKE_SHARDS, "outbox:x", "outbox-shards:x", 0, None
            )
            # Again, for its result: the session holds the shards' locks already.
            taken = await conn.fetchrow(outbox._TAKE_SHARDS, "outbox:x", "outbox-shards:x", 0, None)
            assert taken is not None
            mine = taken["mine"]
            rows_plan = await _explain(conn, outbox._TAKE_ROWS, mine, 32)
    finally:
        await conn.close()
    assert len(mine) == 16  # every shard has work, and one relay takes them all
    assert _rows_read(shards_plan) <= 16  # one probe per shard, each stopping at a row
    assert _rows_read(rows_plan) == 16 * 32  # each shard's quota, and nothing more


async def test_published_rows_leave_the_outbox_and_its_vacuum_keeps_the_probes_short(
    infra: Any, database_url: str, schema: str
) -> None:
    """What a relay publishes moves to outbox_published; once the relay's VACUUM ran, a
    claim's probes read a page or two per shard, not the entries of every row published
    since. (With rows marked in place, autovacuum came once a fifth of a day's rows had
    changed: one claim on an empty outbox read 2,500 pages, 13 ms.)"""
    topic = unique("test.relay")
    await ensure_topics(infra.kafka(), partitions=PARTITIONS, replication_factor=1, topics=[topic])
    await add_rows(database_url, schema, topic, rows=20_000, keys=1_000)
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    async with AsyncExitStack() as stack:
        relay = (await start_relay(stack, infra, database_url, schema, batch_size=500)).relay
        while await relay.publish_batch():
            pass
        left = await conn.fetchval("SELECT count(*) FROM outbox")
        moved = await conn.fetch("SELECT id, published_at FROM outbox_published")
        before = await _probe_pages(conn)
        await relay.vacuum()
        after = await _probe_pages(conn)
    await conn.close()
    assert left == 0
    assert sorted(row["id"] for row in moved) == list(range(1, 20_001))
    assert all(row["published_at"] for row in moved)
    assert after <= 2 * 16 < before, (before, after)  # each shard's probe: a page or two


async def test_the_migration_keeps_what_waits_and_moves_what_was_published(
    database_url: str,
) -> None:
    """kit-0004 on an outbox in use: the waiting rows stay, with their ids (each key's
    order) and shards, in the new outbox, which goes on numbering after them; the
    published ones are in outbox_published, none copied twice, none lost."""
    name = unique("relay_upgrade").replace("-", "_")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE SCHEMA {name}; SET search_path = {name}")
        before, (upgrade,) = _kit_migrations(up_to="kit-0004")
        for sql in before:
            await conn.execute(sql.read_text())
        await add_rows(database_url, name, "relay.upgrade", rows=100, keys=7)
        await conn.execute("UPDATE outbox SET published_at = now() WHERE id % 3 <> 0")
        waiting = await conn.fetch(
            "SELECT id, key, shard, event_id FROM outbox WHERE published_at IS NULL ORDER BY id"
        )
        await conn.execute(upgrade.read_text())
        await add_rows(database_url, name, "relay.upgrade", rows=1, keys=1)
        after = await conn.fetch("SELECT id, key, shard, event_id FROM outbox ORDER BY id")
        published = await conn.fetch("SELECT id, published_at FROM outbox_published")
        await conn.execute(f"DROP SCHEMA {name} CASCADE")
    finally:
        await conn.close()
    assert [tuple(row) for row in after[:-1]] == [tuple(row) for row in waiting]
    assert len(waiting) == 33 and after[-1]["id"] == 101
    assert sorted(row["id"] for row in published) == [i for i in range(1, 101) if i % 3]
    assert all(row["published_at"] for row in published)


def _kit_migrations(*, up_to: str) -> tuple[list[Path], list[Path]]:
    """The kit's migrations before `up_to`, and `up_to` itself."""
    found = sorted(KIT_MIGRATIONS.glob("*.sql"))
    return (
        [sql for sql in found if sql.name < up_to],
        [sql for sql in found if sql.name.startswith(up_to)],
    )


async def _probe_pages(conn: asyncpg.Connection) -> int:
    """Pages a claim's search for shards with work reads."""
    async with conn.transaction():
        await conn.execute(outbox._BY_KEY)
        found = await conn.fetchval(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {outbox._TAKE_SHARDS}",
            "outbox:x",
            "outbox-shards:x",
            0,
            None,
        )
    plan = json.loads(found)[0]["Plan"]
    return int(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])


async def _explain(conn: asyncpg.Connection, sql: str, *args: Any) -> dict[str, Any]:
    found = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    plan: dict[str, Any] = json.loads(found)[0]["Plan"]
    return plan


def _rows_read(plan: dict[str, Any]) -> float:
    """Rows the plan's scans of the outbox read (returned or filtered out), over all
    their loops."""
    own = 0.0
    if plan.get("Relation Name") == "outbox":
        read = plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
        own = read * plan["Actual Loops"]
    return own + sum(_rows_read(child) for child in plan.get("Plans", []))


async def test_the_purge_deletes_what_was_published_a_day_ago_in_chunks_one_relay_at_a_time(
    infra: Any, database_url: str, schema: str
) -> None:
    """Rows published more than a day ago go, in chunks; younger ones and unpublished
    ones stay; a relay that finds another purging leaves the round to it."""
    await add_rows(database_url, schema, "relay.purge", rows=300, keys=10)
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        stack = AsyncExitStack()
        # Published: the even ids as a relay does (moved to outbox_published), the odd
        # ones as a relay before kit-0004 did (marked in place); every id ending in 1 waits.
        await conn.execute(
            """
            WITH moved AS (DELETE FROM outbox WHERE id % 10 <> 1 AND id % 2 = 0 RETURNING *)
            INSERT INTO outbox_published
                (id, topic, key, event_id, payload, headers, created_at, published_at)
            SELECT id, topic, key, event_id, payload, headers, created_at, now() FROM moved;
            UPDATE outbox SET published_at = now() WHERE id % 10 <> 1;
            """
        )
        for table in ("outbox", "outbox_published"):
            await conn.execute(
                f"""
                UPDATE {table} SET published_at = now() - CASE WHEN id % 6 = 0
                    THEN interval '2 hours' ELSE interval '25 hours' END
                WHERE published_at IS NOT NULL
                """
            )
        old = await conn.fetchval(
            """
            SELECT (SELECT count(*) FROM outbox WHERE published_at < now() - interval '1 day')
                 + (SELECT count(*) FROM outbox_published
                    WHERE published_at < now() - interval '1 day')
            """
        )
        relay = (await start_relay(stack, infra, database_url, schema, batch_size=100)).relay
        relay.PURGE_CHUNK = 40
        # Another relay purging: it holds the round's lock for its chunk.
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"outbox-purge:{schema}"
            )
            assert await relay.purge() == 0
        assert await relay.purge() == old > 3 * relay.PURGE_CHUNK
        left = await conn.fetch(
            "SELECT published_at IS NULL AS unpublished FROM outbox "
            "UNION ALL SELECT false FROM outbox_published"
        )
    finally:
        await stack.aclose()
        await conn.close()
    assert len(left) == 300 - old
    assert sum(row["unpublished"] for row in left) == 30  # every id ending in 1


async def test_two_relays_publish_different_shards_at_the_same_time(
    infra: Any, database_url: str, schema: str
) -> None:
    topic = unique("test.relay")
    await ensure_topics(infra.kafka(), partitions=PARTITIONS, replication_factor=1, topics=[topic])

    async with AsyncExitStack() as stack, TopicReader(infra, (topic,)) as reader:
        # Each publish takes 0.1 s: one relay at a time would need 40 of them in a row.
        relays = [
            await start_relay(stack, infra, database_url, schema, 50, publish_takes_s=0.1)
            for _ in range(2)
        ]
        async with relaying(relays):
            # Once each has counted the other, each takes half the shards per batch.
            await eventually(lambda: _counted(relays, 2), timeout_s=10)
            await add_rows(database_url, schema, topic, rows=2000, keys=160)
            await eventually(lambda: _none_left(database_url, schema), timeout_s=60)
        bodies = await read_everything(infra, reader, topic)
    shards = await shard_of_keys(database_url, schema)

    assert len(bodies) == 2000 and len({body["seq"] for body in bodies}) == 2000
    first, second = relays
    overlapping = [
        (a_keys, b_keys)
        for a_start, a_end, a_keys in first.publishes
        for b_start, b_end, b_keys in second.publishes
        if a_start < b_end and b_start < a_end
    ]
    # Both published, much of the time at once, and never a shard both at once.
    assert first.publishes and second.publishes
    assert len(overlapping) >= 5, (len(first.publishes), len(second.publishes))
    for a_keys, b_keys in overlapping:
        assert not {shards[k] for k in a_keys} & {shards[k] for k in b_keys}


async def _counted(relays: list[Relay], count: int) -> bool:
    return all(r.metric("coinstream_outbox_relays") == count for r in relays)


async def test_a_commit_wakes_the_process_relay_without_notify(
    infra: Any, database_url: str, schema: str
) -> None:
    topic = Probe.topic
    await ensure_topics(infra.kafka(), partitions=1, replication_factor=1, topics=[topic])
    notified: list[str] = []
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(outbox.channel(schema), lambda *args: notified.append(args[3]))

    async with AsyncExitStack() as stack, TopicReader(infra, (topic,)) as reader:
        stack.push_async_callback(listener.close)
        # It polls every 30 s and does not LISTEN: only the kick can wake it in time.
        relay = await start_relay(stack, infra, database_url, schema, 100, poll_interval_s=30)
        relay.db.after_commit = relay.relay.kick
        async with relaying([relay]):
            await eventually(lambda: _counted([relay], 1), timeout_s=10)
            kicked = Probe(request_id=unique("kicked"))
            async with relay.db.transaction() as conn:
                await outbox.enqueue(conn, [kicked])
            started = time.monotonic()
            await eventually(lambda: _seen(reader, kicked.request_id), timeout_s=5, every_s=0.01)
            kicked_s = time.monotonic() - started
            # Another writer (no relay of its own here) still wakes relays by NOTIFY.
            other = Probe(request_id=unique("other"))
            conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
            try:
                async with conn.transaction():
                    await outbox.enqueue(conn, [other])
            finally:
                await conn.close()
            await eventually(lambda: _listed(notified), timeout_s=5)

    assert kicked_s < 2.0, kicked_s
    assert notified == [""]  # once: the second commit's; the kicked one sent none


async def _seen(reader: TopicReader, request_id: str) -> bool:
    return any(request_id.encode() in (r.value or b"") for r in reader.records)


async def _listed(items: list[str]) -> bool:
    return bool(items)


class Probe(Event):
    """An event of the test's own topic: no service consumes it."""

    topic = "test.relay-kick"
    key_field = "request_id"


async def _none_left(database_url: str, schema: str) -> bool:
    return await unpublished(database_url, schema) == 0


END_MARKER = b"{}"


async def publish_end_markers(infra: Endpoints, topic: str, *, partitions: int) -> None:
    producer = AIOKafkaProducer(**infra.kafka().client_options())
    await producer.start()
    try:
        for partition in range(partitions):
            await producer.send_and_wait(topic, END_MARKER, partition=partition)
    finally:
        await producer.stop()


async def _markers_seen(reader: TopicReader, count: int) -> bool:
    return sum(record.value == END_MARKER for record in reader.records) >= count


@dataclass
class Finished:
    returncode: int | None
    stderr: str


async def run_relay_once(database_url: str, schema: str, infra: Any, *, crash: bool) -> Finished:
    """One relay batch in a process of its own, optionally SIGKILLed before marking."""
    env = {
        **os.environ,
        # The events are the payment service's: its relay publishes them as payment.
        **infra.kafka("payment").environment(),
        "COINSTREAM_CRASH_AT": "relay.after_publish" if crash else "",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.relay_once",
        database_url,
        schema,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    return Finished(process.returncode, stderr.decode(errors="replace"))


@pytest.fixture
async def wallet(
    service_settings: Callable[..., Any], operator_token: str
) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(
        create_app(service_settings(WalletSettings)), token=operator_token
    ) as client:
        yield client


async def test_a_relay_killed_between_publishing_and_marking_leaves_a_duplicate_that_is_ignored(
    infra: Any, database_url: str, schema: str, wallet: httpx.AsyncClient
) -> None:
    user = unique("user")
    event = PurchaseCompleted(
        request_id=unique("req"),
        payment_id=unique("pay"),
        user_id=user,
        package_id="coins_350",
        coins=350,
        bonus_coins=0,
        price=Money(amount_minor=499, currency="USD"),
    )
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        async with conn.transaction():
            await outbox.enqueue(conn, [event])
    finally:
        await conn.close()

    async with TopicReader(infra, (topics.PURCHASE_COMPLETED, topics.COINS_CREDITED)) as reader:
        crashed = await run_relay_once(database_url, schema, infra, crash=True)
        assert crashed.returncode == -9, crashed.stderr[-2000:]
        await reader.wait_for(topics.PURCHASE_COMPLETED, event_id=event.event_id)
        assert await unpublished(database_url, schema) == 1  # published, never marked

        again = await run_relay_once(database_url, schema, infra, crash=False)
        assert again.returncode == 0, again.stderr[-2000:]
        assert await unpublished(database_url, schema) == 0
        await reader.wait_for(topics.PURCHASE_COMPLETED, count=2, event_id=event.event_id)
        # Same key, so the wallet handles it after both copies of the event.
        sentinel = event.model_copy(
            update={"event_id": unique("evt"), "payment_id": unique("pay"), "coins": 70}
        )
        await publish(
            infra,
            topics.PURCHASE_COMPLETED,
            [(user, sentinel.model_dump_json().encode())],
        )
        await reader.wait_for(topics.COINS_CREDITED, payment_id=sentinel.payment_id)
        credits = reader.matching(topics.COINS_CREDITED, user_id=user)

    balance = (await wallet.get(f"/v1/users/{user}/balance")).json()
    assert balance["coins"] == 350 + 70
    assert [credit["payment_id"] for credit in credits] == [event.payment_id, sentinel.payment_id]
