"""The outbox: events written with the state change, published later by the relay.

`enqueue` runs inside the caller's transaction, so an event exists exactly when the
change that caused it committed. The relay publishes with an idempotent producer and
marks rows; a crash between publishing and marking republishes the same `event_id`,
which consumers recognise through their inbox.

The outbox is split into shards by a hash of the key (kit-0002); each replica's relay
publishes the shards it holds, so N replicas publish at once while one key's events
keep their order.

Published rows leave the outbox for `outbox_published` (kit-0004), kept a day, and the
relay vacuums the outbox every few seconds: it stays the size of what waits, so a
claim's look for work stays a page or two per shard however long the service runs.
"""

import asyncio
import collections
import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.contracts import Event, Message
from shared.db import Connection, call_after_commit
from shared.faults import crash_point
from shared.retry import backoff_s
from shared.tracing import Tracing, outbox_headers, stored_headers

log = logging.getLogger(__name__)


class OutboxRecord(NamedTuple):
    """One row of the outbox on its way to Kafka."""

    topic: str
    key: bytes
    value: bytes
    event_id: str  # the record's `event_id` header, which consumers deduplicate by
    # More headers, stored with the row (kit-0003): the trace context of its cause.
    headers: tuple[tuple[str, bytes], ...] = ()


Publish = Callable[[Sequence[OutboxRecord]], Awaitable[None]]
"""Send records, each key's in the order given; return once the broker has every one."""

Connect = Callable[[], Awaitable[asyncpg.Connection]]
"""Opens a new connection of the relay's own (`Database.connect`) for its LISTEN."""


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that wakes a schema's relay."""
    return f"{schema}_outbox"


async def enqueue(conn: Connection, events: Sequence[Event]) -> None:
    """Add events to the outbox inside the caller's transaction (in order) and wake a relay:
    the process's own once the transaction commits, when it runs in a
    `Database.transaction` whose database has one, else any relay through NOTIFY."""
    await _add(conn, [(event, event.event_id) for event in events])


async def enqueue_request(conn: Connection, request: Message, *, message_id: str) -> None:
    """Add a request-shaped message (one without an `event_id` of its own, such as a
    chargeback notice a webhook received) to the outbox, with `message_id` as the
    `event_id` header of the published record."""
    await _add(conn, [(request, message_id)])


async def _add(conn: Connection, messages: Sequence[tuple[Message, str]]) -> None:
    if not messages:
        return
    # A wake-up only: relays also poll, so a lost one costs latency, not an event. When
    # this process's relay is kicked after the commit, no NOTIFY: a notifying commit
    # takes a database-wide lock until it is flushed, which would serialise the commits
    # of every replica of every service. Otherwise one NOTIFY per transaction, in one
    # statement with the insert (one round trip less).
    notify = not call_after_commit()
    columns = [
        [message.topic for message, _ in messages],
        [message.key() for message, _ in messages],
        [message_id for _, message_id in messages],
        [message.model_dump_json().encode() for message, _ in messages],
    ]
    # The trace context of each message's cause (None when tracing is off: one check).
    headers = outbox_headers(message for message, _ in messages)
    if headers is None:
        await conn.execute(_INSERT, *columns, notify)
    else:
        await conn.execute(_INSERT_WITH_HEADERS, *columns, notify, headers)


_INSERT = """
WITH added AS (
    INSERT INTO outbox (topic, key, event_id, payload)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])
)
SELECT pg_notify(current_schema() || '_outbox', '') WHERE $5
"""

_INSERT_WITH_HEADERS = """
WITH added AS (
    INSERT INTO outbox (topic, key, event_id, payload, headers)
    SELECT t, k, e, p, h::jsonb
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $6::text[]) AS u(t, k, e, p, h)
)
SELECT pg_notify(current_schema() || '_outbox', '') WHERE $5
"""


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "coinstream_outbox_published", "Outbox events published to Kafka", registry=registry
        )
        self.lag = Histogram(
            "coinstream_outbox_lag_seconds",
            "Time from commit to publication of the oldest event of each published batch",
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
        self.batches = Counter(
            "coinstream_outbox_batches", "Batches the relay published", registry=registry
        )
        self.relays = Gauge(
            "coinstream_outbox_relays",
            "Relays seen at work on this schema (this one included): each takes its share "
            "of the shards",
            registry=registry,
        )


@dataclass(frozen=True)
class _Claim:
    rows: list[asyncpg.Record]
    pending: int  # shards that had unpublished rows
    taken: int  # of which this batch holds (the others: past its share, or another's)
    full: bool  # a shard gave the batch its whole quota: it may have more


_BY_KEY = """
-- A claim's statements read each shard's head through the primary key (shard, id) and
-- nothing else (kit-0005). An outbox's statistics are never right for long: autoanalyze
-- finds it empty, or a batch long, and with a backlog behind it the planner's cheapest
-- plan reads every row of a shard (a bitmap scan and a sort, or a scan of the whole
-- table until a row of the shard turns up) where the key reads the batch.
SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off
"""

_TAKE_SHARDS = """
WITH turn AS MATERIALIZED (
    -- Shared with every relay of this version, exclusive for a relay of the version
    -- before shards (one batch per schema): during a rolling upgrade the two never
    -- publish at the same time.
    SELECT pg_try_advisory_xact_lock_shared(hashtext($1)) AS ours
), pending AS MATERIALIZED (
    -- One probe per shard, each stopping at its first unpublished row: a scalar subquery
    -- with LIMIT is never turned into a join, so the cost does not grow with the backlog
    -- (as EXISTS did once the planner, seeing an empty queue in its statistics, chose to
    -- hash every unpublished row for each claim). Through the primary key (shard, id),
    -- in order: see _BY_KEY.
    SELECT s.n AS shard FROM generate_series(0, outbox_shards() - 1) AS s(n)
    WHERE (SELECT true FROM outbox WHERE shard = s.n AND published_at IS NULL
           ORDER BY id LIMIT 1)
    ORDER BY (s.n + $3) % outbox_shards()
), mine AS MATERIALIZED (
    -- Evaluated row by row until the share is reached: shards another relay holds are
    -- skipped, and the lock is taken on at most $4 shards.
    SELECT shard FROM pending, turn
    WHERE turn.ours AND pg_try_advisory_xact_lock(hashtext($2), shard)
    LIMIT $4
)
SELECT (SELECT count(*) FROM pending) AS pending,
       coalesce((SELECT array_agg(shard) FROM mine), '{}') AS mine
"""

_TAKE_ROWS = """
-- A statement of its own, after the shards' locks are held: its snapshot sees every
-- mark a relay that held one of them committed before letting go (a lock is released
-- after its transaction's commit is visible), so no row is taken twice and none needs
-- a row lock. Each shard's oldest rows, at most $2 of each (the batch's quota per
-- shard), walking the primary key (shard, id) in order (kit-0005: no index leads with
-- id, so no plan walks every shard's rows in id order to filter one shard's): a prefix
-- of each shard, so every key's events go out in order.
SELECT o.address, o.id, o.shard, o.topic, o.key, o.event_id, o.payload,
       o.headers::text AS headers, extract(epoch FROM clock_timestamp() - o.created_at) AS age_s
FROM unnest($1::smallint[]) AS m(shard)
CROSS JOIN LATERAL (
    SELECT ctid AS address, * FROM outbox
    WHERE shard = m.shard AND published_at IS NULL
    ORDER BY id LIMIT $2
) AS o
ORDER BY o.id
"""

_MARK = """
-- Published rows leave the outbox for outbox_published (kit-0004): the outbox keeps only
-- what waits, so its VACUUM is quick and a claim's probes find no pile of dead entries.
-- The rows are found by the addresses the take read (a TID scan, no plan to choose):
-- nothing moves them while their shards' locks are held (no other writer updates or
-- deletes a waiting row; VACUUM FULL waits for this transaction's lock on the table).
WITH gone AS (
    DELETE FROM outbox WHERE ctid = ANY($1::tid[])
    RETURNING id, topic, key, event_id, payload, headers, created_at
)
INSERT INTO outbox_published (id, topic, key, event_id, payload, headers, created_at, published_at)
SELECT id, topic, key, event_id, payload, headers, created_at, clock_timestamp() FROM gone
"""

_PURGE_CHUNK = """
WITH turn AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock(hashtext($2)) AS ours
), gone AS (
    -- Oldest first, through the index on published_at.
    DELETE FROM outbox_published WHERE id IN (
        SELECT id FROM outbox_published, turn
        WHERE turn.ours AND published_at < now() - interval '1 day'
        ORDER BY published_at LIMIT $1
    )
    RETURNING 1
), marked AS (
    -- Rows a relay before kit-0004 marked in place, through their own index.
    DELETE FROM outbox WHERE ctid IN (
        SELECT ctid FROM outbox, turn
        WHERE turn.ours AND published_at < now() - interval '1 day'
        ORDER BY published_at LIMIT $1
    )
    RETURNING 1
)
SELECT (SELECT ours FROM turn) AS ours,
       (SELECT count(*) FROM gone) AS deleted,
       (SELECT count(*) FROM marked) AS deleted_in_place
"""

_PRESENT = """
WITH me AS (
    INSERT INTO outbox_relays (relay) VALUES ($1)
    ON CONFLICT (relay) DO UPDATE SET seen_at = now()
)
SELECT outbox_shards() AS shards,
       1 + (SELECT count(*) FROM outbox_relays
            WHERE relay <> $1 AND seen_at > now() - make_interval(secs => $2)) AS relays
"""


class OutboxRelay:
    """Publishes a schema's outbox to Kafka: claim a batch, publish it, move it to
    `outbox_published` (the mark), repeat.

    Several replicas may run a relay on the same schema, and they publish at once. A
    batch holds the shards it claims from with a transaction-scoped advisory lock each
    (`pg_try_advisory_xact_lock(hashtext('outbox:<schema>'), shard)`), skipping shards
    another relay holds, then, in a second statement, takes each shard's oldest
    unpublished rows in id order, an equal quota of the batch from each. Every event of
    a key is in one shard, a shard is in one batch at a time, and a batch marks its rows
    before its locks go: each key's events go out in order whichever relays publish
    them. A relay that dies mid-batch loses its locks with its transaction. What a claim
    costs depends on the batch, not on the backlog behind it.

    Each batch takes about its share of the shards with work: all of them for a relay
    alone, half of them with two relays (they count each other in `outbox_relays`),
    starting from a shard that turns with every batch, so no relay keeps the others
    from the work and no shard waits.

    It is woken by `kick` (the process's own commits, see `Database.after_commit`), by a
    NOTIFY at other writers' commits (see `listen`), and polls every `poll_interval_s`.
    """

    VACUUM_EVERY_S = 5.0  # the outbox's dead rows go this often (autovacuum: once a minute)
    PURGE_EVERY_S = 300.0  # published rows are kept a day for operators, then deleted
    PURGE_CHUNK = 5_000  # rows per DELETE: a day's worth goes in short statements
    PRESENT_EVERY_S = 2.0  # how often a relay says it is at work and counts the others
    GONE_AFTER_S = 6.0  # a relay not seen for this long is not counted
    CONTENDED_RETRY_S = 0.02  # shards with work all held by others: look again this soon
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
        tracing: Tracing | None = None,
    ) -> None:
        self._pool = pool
        self._tracing = tracing or Tracing.off()
        self._listen = listen
        self._schema = schema
        self._publish = publish
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        self._chores = (
            _Chore(f"VACUUM of {schema}.outbox", self.VACUUM_EVERY_S, self.vacuum),
            _Chore(f"outbox purge of {schema}", self.PURGE_EVERY_S, self.purge),
        )
        self._name = uuid.uuid4().hex
        self._share: int | None = None  # shards per batch; None: all (before counting)
        self._last_present = -math.inf
        self._turn = 0
        self._contended = False
        self._more = False
        self._stopping = False
        self._failed = False

    def kick(self) -> None:
        """Look at the outbox now (something was just committed to it)."""
        self._wakeup.set()

    def stop(self) -> None:
        """Drain, then end `run`: publish batches until one finds nothing left to take
        (rows in shards another relay holds are that relay's), then return. Called once
        the consumers stopped, it publishes everything they committed; the caller bounds
        the wait and cancels a drain that cannot finish (Kafka unreachable)."""
        self._stopping = True
        self._wakeup.set()

    async def publish_batch(self) -> int:
        """Publish one batch of unpublished rows; returns how many were published."""
        async with self._pool().acquire() as conn, conn.transaction():
            claim = await self._claim(conn)
            rows = claim.rows
            if rows:
                records = [
                    OutboxRecord(
                        r["topic"],
                        r["key"].encode(),
                        r["payload"],
                        r["event_id"],
                        stored_headers(h) if (h := r["headers"]) else (),
                    )
                    for r in rows
                ]
                if self._tracing.enabled:
                    with self._tracing.publishing(records) as traced:
                        await self._publish(traced)
                else:  # headers stored by a traced writer go out as they are
                    await self._publish(records)
                crash_point("relay.after_publish")
                await conn.execute(_MARK, [row["address"] for row in rows])
        # Shards with work left: past this relay's share (go on at once) or held by
        # another relay (which goes on after its batch; looked at again soon anyway).
        self._more = claim.full or claim.taken < claim.pending
        self._contended = claim.taken < claim.pending and not rows
        if rows:
            self._metrics.batches.inc()
            self._metrics.published.inc(len(rows))
            # The batch's oldest event: one observation per batch, not per row.
            self._metrics.lag.observe(max(float(row["age_s"]) for row in rows))
        return len(rows)

    async def _claim(self, conn: Connection) -> _Claim:
        self._turn += 1
        share = self._share
        await conn.execute(_BY_KEY)
        taken = await conn.fetchrow(
            _TAKE_SHARDS,
            f"outbox:{self._schema}",
            f"outbox-shards:{self._schema}",
            self._turn * (share or 1) % 65536,  # where this batch starts, mod the shards
            # At most one shard per row of the batch, so each gets a row at least.
            min(share or self._batch_size, self._batch_size),
        )
        assert taken is not None
        shards: list[int] = taken["mine"]
        if not shards:
            return _Claim([], int(taken["pending"]), 0, full=False)
        quota = self._batch_size // len(shards)  # the batch never holds more than its size
        rows = await conn.fetch(_TAKE_ROWS, shards, quota)
        per_shard = collections.Counter(row["shard"] for row in rows)
        full = any(count == quota for count in per_shard.values())
        return _Claim(rows, int(taken["pending"]), len(shards), full=full)

    async def _present_if_due(self) -> None:
        """Say this relay is at work and take its share: the shards over the relays seen."""
        now = asyncio.get_running_loop().time()
        if now - self._last_present < self.PRESENT_EVERY_S:
            return
        self._last_present = now
        found = await self._pool().fetchrow(_PRESENT, self._name, self.GONE_AFTER_S)
        assert found is not None
        relays = int(found["relays"])
        self._share = math.ceil(int(found["shards"]) / relays)
        self._metrics.relays.set(relays)

    async def _absent(self) -> None:
        with contextlib.suppress(Exception):  # stopping: the others stop counting it soon
            await self._pool().execute("DELETE FROM outbox_relays WHERE relay = $1", self._name)

    async def run(self) -> None:
        """Relay until cancelled: after a batch that left work (a full batch, or shards past
        its share) go on at once, else wait for a wake-up (a `kick`, a NOTIFY on the
        schema's channel) or the poll interval, whichever comes first.

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
            background = [t for t in (listening, *(c.task for c in self._chores)) if t]
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await asyncio.shield(self._absent())

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
                async with asyncio.timeout(self.LISTEN_CHECK_EVERY_S):
                    await lost.wait()
            if lost.is_set() or not await _answers(conn, self.LISTEN_CHECK_TIMEOUT_S):
                return

    async def _relay_forever(self) -> None:
        while True:
            # Cleared before the claim: a kick during the batch (a commit its claim may
            # not have seen) makes one more pass.
            self._wakeup.clear()
            try:
                await self._present_if_due()
                published = await self.publish_batch()
                self._chores_if_due()
                self._failed = False
            except Exception:  # the relay must outlive a broker or database outage
                log.exception("outbox relay failed; retrying")
                published, self._more, self._contended = 0, False, False
                self._failed = True
            if published and self._more:
                continue
            if self._stopping:
                if published:
                    continue  # one more pass: the claim may have missed a late commit
                if not self._failed:
                    return
            await self._wait(self.CONTENDED_RETRY_S if self._contended else self._poll_interval_s)

    async def _wait(self, timeout_s: float) -> None:
        # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` swallows a
        # cancellation that comes in the turn the wake-up does, and the relay ran on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wakeup.wait()

    def _chores_if_due(self) -> None:
        """Start the VACUUM and the purge beside the publishing when each is due."""
        now = asyncio.get_running_loop().time()
        for chore in self._chores:
            chore.start_if_due(now)

    async def vacuum(self) -> None:
        """VACUUM the outbox, unless another relay's VACUUM of it is running (every
        VACUUM_EVERY_S).

        Each published row leaves a dead entry in the index of unpublished rows, which
        every claim's probes walk until a VACUUM removes it: at a few thousand rows a
        second, autovacuum's minute between visits lets the claims slow down tenfold.
        The outbox holds only unpublished rows (kit-0004), so this takes milliseconds.
        """
        await self._pool().execute("VACUUM (SKIP_LOCKED) outbox")

    async def purge(self) -> int:
        """Delete the rows published more than a day ago, PURGE_CHUNK at a time, and the
        relays not seen for an hour; returns the rows deleted. One relay of the schema
        purges at a time: a chunk is deleted under a transaction-scoped advisory lock,
        and a relay that finds it held leaves the round to the one holding it."""
        deleted = 0
        while True:
            chunk = await self._pool().fetchrow(
                _PURGE_CHUNK, self.PURGE_CHUNK, f"outbox-purge:{self._schema}"
            )
            assert chunk is not None
            deleted += chunk["deleted"] + chunk["deleted_in_place"]
            if (
                not chunk["ours"]
                or max(chunk["deleted"], chunk["deleted_in_place"]) < self.PURGE_CHUNK
            ):
                break
        await self._pool().execute(
            "DELETE FROM outbox_relays WHERE seen_at < now() - interval '1 hour'"
        )
        return int(deleted)


class _Chore:
    """Work a relay starts beside its publishing every `every_s` (a day's purge takes many
    chunks, and publishing must not wait for it), never two runs at a time. A failure is
    logged and the next round tries again: the rows only wait."""

    def __init__(self, what: str, every_s: float, run: Callable[[], Awaitable[object]]) -> None:
        self._what = what
        self._every_s = every_s
        self._run = run
        self._last = 0.0
        self.task: asyncio.Task[None] | None = None

    def start_if_due(self, now: float) -> None:
        if now - self._last < self._every_s:
            return
        if self.task is not None and not self.task.done():
            return  # the last one is still at it
        self._last = now
        self.task = asyncio.create_task(self._logged())

    async def _logged(self) -> None:
        try:
            await self._run()
        except Exception:
            log.exception("%s failed; trying again in %.0fs", self._what, self._every_s)


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
