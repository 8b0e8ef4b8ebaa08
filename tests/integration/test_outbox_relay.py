"""The outbox relay against real Kafka and PostgreSQL: no row twice, crashes survived."""

import asyncio
import json
import os
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
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
from shared.contracts import PurchaseCompleted
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


async def start_relay(
    stack: AsyncExitStack, infra: Any, database_url: str, schema: str, batch_size: int
) -> outbox.OutboxRelay:
    registry = CollectorRegistry()
    producer = relay_producer(RelaySettings(kafka=infra.kafka(), database_url=database_url))
    await producer.start()
    stack.push_async_callback(producer.stop)
    db = Database(database_url, schema=schema)
    await db.open()
    stack.push_async_callback(db.close)
    return outbox.OutboxRelay(
        lambda: db.pool,
        schema=schema,
        publish=outbox_publisher(producer),
        metrics=outbox.RelayMetrics(registry),
        batch_size=batch_size,
        poll_interval_s=0.05,
    )


async def test_two_relays_at_once_publish_every_row_once_and_in_key_order(
    infra: Any, database_url: str, schema: str
) -> None:
    topic = unique("test.relay")
    await ensure_topics(infra.kafka(), partitions=6, replication_factor=1, topics=[topic])
    rows = 3000
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        await conn.execute(
            """
            INSERT INTO outbox (topic, key, event_id, payload)
            SELECT $1, 'k' || (i % 20), 'e' || i,
                   convert_to(json_build_object('seq', i, 'key', 'k' || (i % 20))::text, 'UTF8')
            FROM generate_series(1, $2) AS i
            """,
            topic,
            rows,
        )
    finally:
        await conn.close()

    async with AsyncExitStack() as stack, TopicReader(infra, (topic,)) as reader:
        relays = [await start_relay(stack, infra, database_url, schema, 100) for _ in range(2)]
        tasks = [asyncio.create_task(relay.run()) for relay in relays]
        try:
            await eventually(lambda: _none_left(database_url, schema), timeout_s=60)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # An end marker in every partition: once the reader has all six, it has read
        # everything the relays wrote, duplicates included.
        await publish_end_markers(infra, topic, partitions=6)
        await eventually(lambda: _markers_seen(reader, 6), timeout_s=30)
        bodies = [json.loads(r.value) for r in reader.records if r.value != END_MARKER]

    assert len(bodies) == rows
    assert len({body["seq"] for body in bodies}) == rows
    by_key: dict[str, list[int]] = defaultdict(list)
    for body in bodies:
        by_key[body["key"]].append(body["seq"])
    # Records of one key share a partition; the reader sees each partition in order.
    assert all(seqs == sorted(seqs) for seqs in by_key.values())


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
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
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
