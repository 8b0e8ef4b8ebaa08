"""Recovery after PostgreSQL restarts: the relay is woken by NOTIFY again within seconds.

The test stack's own PostgreSQL is stopped as a crash would (`pg_ctl stop -m immediate`)
and started again while a relay runs. The relay polls only every 30 s here, so an event
published well under a second after its commit proves a NOTIFY woke the relay: a relay
that lost its LISTEN connection for good would fail the test by tens of seconds.
"""

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

import devstack
from devstack import postgres
from services.wallet.main import create_app
from services.wallet.settings import WalletSettings
from shared import outbox, topics
from shared.broker import outbox_publisher, relay_producer
from shared.contracts import Event
from shared.db import Database
from shared.kafka_admin import ensure_topics
from shared.migrations import KIT_MIGRATIONS
from shared.settings import ServiceSettings
from tests.integration.wallet_support import as_message, completed
from tests.support import TopicReader, eventually, in_process, publish, unique

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLL_INTERVAL_S = 30.0  # the relay's fallback: a relay that only polls fails clearly
WOKEN_WITHIN_S = 1.0  # commit → published when a NOTIFY wakes the relay (p50 is ~10 ms)
LISTENS_AGAIN_WITHIN_S = 10.0  # after the server answers again
POOL_SIZE = 3
LISTENER = "outbox-listen"


class RelaySettings(ServiceSettings):
    pass


class Probe(Event):
    """An event of the test's own topic: no service consumes it."""

    topic = "test.relay-recovery"
    key_field = "request_id"


@pytest.fixture
def instance(infra: Any) -> devstack.Instance:
    if infra.backend != "devstack":
        pytest.skip("restarts PostgreSQL: only the local stack's test instance can be")
    return devstack.get_instance("test")


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    """A schema of its own holding only the kit's inbox and outbox tables."""
    name = unique("recovery").replace("-", "_")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE SCHEMA {name}; SET search_path = {name}")
        for sql in sorted(KIT_MIGRATIONS.glob("*.sql")):
            await conn.execute(sql.read_text())
    finally:
        await conn.close()
    yield name
    conn = await asyncpg.connect(database_url)  # a new one: the server restarted meanwhile
    try:
        await conn.execute(f"DROP SCHEMA {name} CASCADE")
    finally:
        await conn.close()


@dataclass
class RunningRelay:
    """A relay on `schema` that notes when each event's record reaches the broker."""

    database_url: str
    schema: str
    db: Database
    registry: CollectorRegistry
    published: dict[str, asyncio.Future[float]] = field(default_factory=dict)

    async def latency_s(self) -> float:
        """Commit one event to the outbox; seconds until the broker acknowledged it."""
        probe = Probe(request_id=unique("probe"))
        acked = self.published[probe.event_id] = asyncio.get_running_loop().create_future()
        conn = await asyncpg.connect(
            self.database_url, server_settings={"search_path": self.schema}
        )
        try:
            async with conn.transaction():
                await outbox.enqueue(conn, [probe])
            committed = time.monotonic()
        finally:
            await conn.close()
        try:
            async with asyncio.timeout(10.0):
                return await acked - committed
        except TimeoutError:
            raise AssertionError(
                f"not published within 10 s of its commit: the relay was not woken by "
                f"NOTIFY (it polls every {POLL_INTERVAL_S:.0f} s)"
            ) from None

    def metric(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0

    async def listening(self) -> bool:
        return self.metric("coinstream_outbox_listening") == 1.0

    def record(self, publish: outbox.Publish) -> outbox.Publish:
        async def send(records: Sequence[outbox.OutboxRecord]) -> None:
            await publish(records)
            for record in records:
                waiting = self.published.get(record.event_id)
                if waiting is not None:
                    _settle(waiting)

        return send


def _settle(waiting: asyncio.Future[float]) -> None:
    if not waiting.done():  # a record published twice is acknowledged twice
        waiting.set_result(time.monotonic())


async def start_relay(
    stack: AsyncExitStack, infra: Any, database_url: str, schema: str
) -> RunningRelay:
    await ensure_topics(infra.kafka(), partitions=1, replication_factor=1, topics=[Probe.topic])
    producer = relay_producer(RelaySettings(kafka=infra.kafka(), database_url=database_url))
    await producer.start()
    stack.push_async_callback(producer.stop)
    db = Database(database_url, schema=schema, min_size=1, max_size=POOL_SIZE)
    await db.open()
    stack.push_async_callback(db.close)
    running = RunningRelay(database_url, schema, db, CollectorRegistry())
    relay = outbox.OutboxRelay(
        lambda: db.pool,
        schema=schema,
        publish=running.record(outbox_publisher(producer)),
        metrics=outbox.RelayMetrics(running.registry),
        listen=lambda: db.connect(purpose=LISTENER),
        poll_interval_s=POLL_INTERVAL_S,
    )
    task = asyncio.create_task(relay.run())
    stack.push_async_callback(_cancel, task)
    await eventually(running.listening, timeout_s=10)
    return running


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def listeners(database_url: str, schema: str) -> list[int]:
    """Server pids of the sessions listening for the schema's relay (in this database)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """
            SELECT pid FROM pg_stat_activity
            WHERE application_name = $1 AND datname = current_database()
            """,
            f"{schema}:{LISTENER}",
        )
    finally:
        await conn.close()
    return [row["pid"] for row in rows]


async def every_pool_slot_answers(db: Database) -> bool:
    """All of the pool's connections at once, each running a query: none is dead or held."""
    pool = db.pool
    async with asyncio.timeout(5.0):
        conns = await asyncio.gather(*(pool.acquire() for _ in range(POOL_SIZE)))
    try:
        answers = await asyncio.gather(*(conn.fetchval("SELECT 1") for conn in conns))
    finally:
        await asyncio.gather(*(pool.release(conn) for conn in conns))
    return answers == [1] * POOL_SIZE


async def test_after_an_immediate_restart_the_relay_listens_again_and_latency_returns(
    infra: Any, database_url: str, schema: str, instance: devstack.Instance
) -> None:
    async with AsyncExitStack() as stack:
        relay = await start_relay(stack, infra, database_url, schema)
        before = [await relay.latency_s() for _ in range(10)]
        listening_before = await listeners(database_url, schema)

        restart_s = await postgres.crash_and_restart(instance, down_s=1.0)
        answered = time.monotonic()
        # Committed before the relay listens again, if it is quick enough: published
        # once it does (it looks at the outbox on reconnecting), not at the next poll.
        first_after = await relay.latency_s()
        await eventually(relay.listening, timeout_s=LISTENS_AGAIN_WITHIN_S)
        listens_again_s = time.monotonic() - answered
        after = [await relay.latency_s() for _ in range(10)]

        listening_after = await listeners(database_url, schema)
        pool_answers = await every_pool_slot_answers(relay.db)
        reconnects = relay.metric("coinstream_outbox_listener_reconnects_total")

    print(
        f"\nlatency before: p50 {statistics.median(before) * 1000:.1f} ms, "
        f"max {max(before) * 1000:.1f} ms; restart took {restart_s:.1f} s; first event "
        f"after it {first_after * 1000:.0f} ms; listening again {listens_again_s:.1f} s "
        f"after the server answered; after: p50 {statistics.median(after) * 1000:.1f} ms, "
        f"max {max(after) * 1000:.1f} ms"
    )
    assert max(before) < WOKEN_WITHIN_S, before
    assert first_after < LISTENS_AGAIN_WITHIN_S, first_after
    assert max(after) < WOKEN_WITHIN_S, after
    assert statistics.median(after) < max(0.1, 3 * statistics.median(before)), (before, after)
    assert reconnects == 1.0
    # One listening session before and after, a new one: the dead one is gone.
    assert len(listening_before) == 1 and len(listening_after) == 1
    assert listening_before != listening_after
    assert pool_answers


async def test_a_listening_session_the_server_ends_is_replaced_at_once(
    infra: Any, database_url: str, schema: str
) -> None:
    # As an operator's pg_terminate_backend or a server timeout ends it: no restart.
    async with AsyncExitStack() as stack:
        relay = await start_relay(stack, infra, database_url, schema)
        [ended] = await listeners(database_url, schema)
        conn = await asyncpg.connect(database_url)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", ended)
        finally:
            await conn.close()

        async def replaced() -> bool:
            now = await listeners(database_url, schema)
            return len(now) == 1 and now != [ended] and await relay.listening()

        await eventually(replaced, timeout_s=LISTENS_AGAIN_WITHIN_S)
        after = [await relay.latency_s() for _ in range(5)]
        reconnects = relay.metric("coinstream_outbox_listener_reconnects_total")

    assert max(after) < WOKEN_WITHIN_S, after
    assert reconnects == 1.0


@pytest.fixture
async def wallet(
    service_settings: Callable[..., Any], operator_token: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The wallet as `make up` runs it, but polling its outbox only every 30 s and not
    kicking its relay after its own commits, so only a NOTIFY wakes the relay in time."""
    settings = service_settings(
        WalletSettings, relay_poll_interval_s=POLL_INTERVAL_S, relay_kick_after_commit=False
    )
    async with in_process(create_app(settings), token=operator_token) as client:
        yield client


async def credit_latency_s(infra: Any, reader: TopicReader) -> float:
    """A purchase completed → the wallet's CoinsCredited, by the record's own timestamp
    (the wallet's producer stamps it when its relay sends it), so however far behind
    the reader is does not count."""
    purchase = completed(unique("user"))
    sent = time.time()
    await publish(infra, topics.PURCHASE_COMPLETED, [as_message(purchase)])

    async def credit() -> int | None:
        for record in reader.records:
            if record.topic == topics.COINS_CREDITED and purchase.payment_id.encode() in (
                record.value or b""
            ):
                return record.timestamp
        return None

    try:
        stamped_ms = await eventually(credit, timeout_s=20.0, every_s=0.01)
    except AssertionError:
        raise AssertionError(
            f"no credit within 20 s: the wallet's relay was not woken by NOTIFY (it polls "
            f"every {POLL_INTERVAL_S:.0f} s)"
        ) from None
    return stamped_ms / 1000 - sent


async def test_the_wallet_answers_as_fast_after_an_immediate_restart_without_restarting(
    infra: Any,
    database_url: str,
    wallet: httpx.AsyncClient,
    instance: devstack.Instance,
) -> None:
    async with TopicReader(infra, (topics.COINS_CREDITED,)) as reader:
        before = [await credit_latency_s(infra, reader) for _ in range(5)]
        await postgres.crash_and_restart(instance, down_s=1.0)
        first_after = await credit_latency_s(infra, reader)
        after = [await credit_latency_s(infra, reader) for _ in range(5)]

    async def listens_once() -> list[int] | None:
        # The credits above may have been woken by the first NOTIFY after the restart
        # while a second listener was still being opened: wait for the steady state.
        now = await listeners(database_url, "wallet")
        return now if len(now) == 1 else None

    listening = await eventually(listens_once, timeout_s=LISTENS_AGAIN_WITHIN_S)

    print(
        f"\nwallet purchase → credit: before p50 {statistics.median(before) * 1000:.0f} ms; "
        f"first after the restart {first_after * 1000:.0f} ms; "
        f"after p50 {statistics.median(after) * 1000:.0f} ms, max {max(after) * 1000:.0f} ms"
    )
    assert first_after < 15.0, first_after  # the consumer's retry backoff, not the poll
    assert max(after) < 2.0, after
    assert statistics.median(after) < max(0.25, 3 * statistics.median(before)), (before, after)
    assert len(listening) == 1, listening
