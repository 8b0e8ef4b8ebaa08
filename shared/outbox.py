"""The outbox: events written with the state change, published later by the relay.

`enqueue` runs inside the caller's transaction, so an event exists exactly when the
change that caused it committed. The relay publishes with an idempotent producer and
marks rows; a crash between publishing and marking republishes the same `event_id`,
which consumers recognise through their inbox.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.contracts import Event, Message
from shared.db import Connection
from shared.faults import crash_point
from shared.retry import backoff_s

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bytes, dict[str, str]], Awaitable[Awaitable[object]]]
"""(topic, key, value, headers) -> a future that resolves once the broker has the record."""

Connect = Callable[[], Awaitable[asyncpg.Connection]]
"""Opens a new connection of the relay's own (`Database.connect`) for its LISTEN."""


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that wakes a schema's relay."""
    return f"{schema}_outbox"


async def enqueue(conn: Connection, events: Sequence[Event]) -> None:
    """Add events to the outbox inside the caller's transaction (in order) and wake the relay."""
    await _add(conn, [(event, event.event_id) for event in events])


async def enqueue_request(conn: Connection, request: Message, *, message_id: str) -> None:
    """Add a request-shaped message (one without an `event_id` of its own, such as a
    chargeback notice a webhook received) to the outbox, with `message_id` as the
    `event_id` header of the published record."""
    await _add(conn, [(request, message_id)])


async def _add(conn: Connection, messages: Sequence[tuple[Message, str]]) -> None:
    if not messages:
        return
    # The notification is delivered at commit, once per transaction however many
    # events: only a wake-up, the relay also polls, so a lost one costs latency, not an
    # event. One statement with the insert: one round trip less per transaction.
    await conn.execute(
        """
        WITH added AS (
            INSERT INTO outbox (topic, key, event_id, payload)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])
        )
        SELECT pg_notify(current_schema() || '_outbox', '')
        """,
        [message.topic for message, _ in messages],
        [message.key() for message, _ in messages],
        [message_id for _, message_id in messages],
        [message.model_dump_json().encode() for message, _ in messages],
    )


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "coinstream_outbox_published", "Outbox events published to Kafka", registry=registry
        )
        self.lag = Histogram(
            "coinstream_outbox_lag_seconds",
            "Time from an event's commit to its publication",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.listening = Gauge(
            "coinstream_outbox_listening",
            "1 while the relay's LISTEN connection is open; 0: it only polls",
            registry=registry,
        )
        self.listener_reconnects = Counter(
            "coinstream_outbox_listener_reconnects",
            "Times the relay's LISTEN connection was lost and opened again",
            registry=registry,
        )


class OutboxRelay:
    """Publishes a schema's outbox to Kafka: claim a batch, publish it, mark it, repeat.

    Several replicas may run a relay on the same schema. A transaction-scoped advisory
    lock lets one batch be in flight at a time, which keeps each key's events in order
    across replicas; `FOR UPDATE SKIP LOCKED` guards the rows themselves.

    A NOTIFY at commit wakes it (see `listen`); it also polls every `poll_interval_s`.
    """

    PURGE_EVERY_S = 300.0  # published rows are kept a day for operators, then deleted
    LISTEN_CHECK_EVERY_S = 5.0  # how often a quiet LISTEN connection is asked to answer
    LISTEN_CHECK_TIMEOUT_S = 5.0
    LISTEN_RETRY_MAX_S = 2.0  # a restarted server is listened to again within this

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        *,
        schema: str,
        publish: Publish,
        metrics: RelayMetrics,
        listen: Connect | None = None,
        batch_size: int = 500,
        poll_interval_s: float = 0.5,
    ) -> None:
        self._pool = pool
        self._listen = listen
        self._schema = schema
        self._publish = publish
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        self._last_purge = 0.0

    async def publish_batch(self) -> int:
        """Publish one batch of unpublished rows; returns how many were published."""
        async with self._pool().acquire() as conn, conn.transaction():
            # The turn (a transaction-scoped advisory lock) and the claim in one round
            # trip: when another relay holds the turn, no row comes back; it will publish
            # these rows.
            rows = await conn.fetch(
                """
                WITH turn AS MATERIALIZED (SELECT pg_try_advisory_xact_lock(hashtext($2)) AS ours)
                SELECT id, topic, key, event_id, payload,
                       extract(epoch FROM clock_timestamp() - created_at) AS age_s
                FROM outbox, turn
                WHERE turn.ours AND published_at IS NULL
                ORDER BY id LIMIT $1
                FOR UPDATE OF outbox SKIP LOCKED
                """,
                self._batch_size,
                f"outbox:{self._schema}",
            )
            if not rows:
                return 0
            sent = [
                await self._publish(
                    row["topic"], row["key"].encode(), row["payload"], {"event_id": row["event_id"]}
                )
                for row in rows
            ]
            await asyncio.gather(*sent)
            crash_point("relay.after_publish")
            await conn.execute(
                "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows],
            )
        self._metrics.published.inc(len(rows))
        for row in rows:
            self._metrics.lag.observe(float(row["age_s"]))
        return len(rows)

    async def run(self) -> None:
        """Relay until cancelled: after a full batch go on at once, else wait for a wake-up
        (a NOTIFY on the schema's channel) or the poll interval, whichever comes first.

        `listen` opens the LISTEN connection: one of the relay's own, outside the pool
        (`Database.connect`), because it lives as long as the relay. Borrowed from the
        pool it would keep a slot from the work for good, and once the server dropped
        it the relay would hold a dead connection and poll until the process restarted.
        Here it is watched (`_until_lost`), closed when lost and opened again with
        backoff, while the poll keeps the outbox moving. Without `listen` the relay
        only polls.
        """
        listening = None
        if self._listen is not None:
            listening = asyncio.create_task(self._listen_forever(self._listen))
        try:
            await self._relay_forever()
        finally:
            if listening is not None:
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)

    def _wake(self, *_: object) -> None:
        self._wakeup.set()

    async def _listen_forever(self, connect: Connect) -> None:
        """Keep one LISTEN connection open: open it, wait until it is lost, again."""
        lost_at: float | None = None
        while True:
            conn = await self._reopen_listener(connect)
            if lost_at is not None:
                self._metrics.listener_reconnects.inc()
                took = asyncio.get_running_loop().time() - lost_at
                log.info("outbox relay of %s listens again after %.1fs", self._schema, took)
            try:
                await self._until_lost(conn)
            finally:
                self._metrics.listening.set(0)
                await _close(conn)
            lost_at = asyncio.get_running_loop().time()
            log.warning(
                "outbox relay of %s lost its LISTEN connection; polling every %ss until it is back",
                self._schema,
                self._poll_interval_s,
            )

    async def _reopen_listener(self, connect: Connect) -> asyncpg.Connection:
        """Open the LISTEN connection, retrying with backoff while the server is down or
        refuses us (the poll goes on meanwhile); only cancellation stops it."""
        failures = 0
        while True:
            try:
                return await self._open_listener(connect)
            except Exception as error:
                failures += 1
                delay = backoff_s(failures, first_s=0.1, max_s=self.LISTEN_RETRY_MAX_S)
                log.warning(
                    "outbox relay of %s cannot LISTEN (%s: %s); trying again in %.1fs",
                    self._schema,
                    type(error).__name__,
                    error,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _open_listener(self, connect: Connect) -> asyncpg.Connection:
        conn = await connect()
        try:
            await conn.add_listener(channel(self._schema), self._wake)
        except BaseException:
            await _close(conn)
            raise
        self._metrics.listening.set(1)
        # Notifications sent while nobody listened are gone: look at the outbox now.
        self._wakeup.set()
        return conn

    async def _until_lost(self, conn: asyncpg.Connection) -> None:
        """Return once `conn` is closed or stops answering.

        The termination listener hears of a closed socket at once (the server stopped
        or restarted); the periodic query finds what no socket reports (a half-open
        connection to a host that vanished).
        """
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), timeout=self.LISTEN_CHECK_EVERY_S)
            if lost.is_set() or not await _answers(conn, self.LISTEN_CHECK_TIMEOUT_S):
                return

    async def _relay_forever(self) -> None:
        while True:
            try:
                published = await self.publish_batch()
                await self._purge_if_due()
            except Exception:  # the relay must outlive a broker or database outage
                log.exception("outbox relay failed; retrying")
                published = 0
            if published < self._batch_size:
                await self._wait()

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_interval_s)
        self._wakeup.clear()

    async def _purge_if_due(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_purge < self.PURGE_EVERY_S:
            return
        self._last_purge = now
        await self._pool().execute(
            "DELETE FROM outbox WHERE published_at < now() - interval '1 day'"
        )


async def _answers(conn: asyncpg.Connection, timeout_s: float) -> bool:
    try:
        await conn.execute("SELECT 1", timeout=timeout_s)
    except Exception:  # closed, broken or too slow: any of them means a new connection
        return False
    return True


async def _close(conn: asyncpg.Connection) -> None:
    """Close gracefully if it still answers, else drop it (`close` aborts on failure)."""
    with contextlib.suppress(Exception):
        await conn.close(timeout=1.0)
