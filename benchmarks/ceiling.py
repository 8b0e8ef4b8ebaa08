"""Benchmark: the gift saga's ceiling on this machine, hand-written without the framework.

The same three hops as coinstream's gift saga, with plain aiokafka and asyncpg on uvloop
and none of FastStream, pydantic, the shared kit, logging or metrics, at the same
durability: idempotent `acks=all` producers, PostgreSQL as the stack runs it (fsync and
synchronous commit on), an inbox per consumed request, row locks taken in id order,
every event written to an outbox in the transaction that decides it, and the consumer's
offsets committed only after that transaction commits.

1. "gifting" consumes `ceiling.gift-requested`, prices and checks each gift, records it
   (the gifts table is the request's inbox: a repeat inserts nothing) and writes
   `ceiling.gift-debit-requested` to its outbox.
2. "wallet" consumes that, records the request in its inbox, locks the sender's coins,
   the creator's diamonds and the platform's commission account of the partition's
   shard (in id order), writes one ledger transaction with three entries and the new
   balances, and writes `ceiling.gift-debit-answered`, `ceiling.coins-debited` and
   `ceiling.diamonds-credited` to its outbox.
3. "gifting" consumes the answer, locks the pending gifts in id order, settles them,
   adds the coins to the stream's leaderboard and writes `ceiling.gift-sent` (or
   `ceiling.gift-rejected`) to its outbox.

Each hop is one asyncpg transaction per consumed batch (up to 500 records), the writes
after the locks in one statement. "gifting" and "wallet" run in processes of their own
(one each, as the stack runs one process per service), started by this script.

Modes: `relay` publishes the outbox the way coinstream does, by a relay in each process
woken after each commit (claim up to 500 unpublished rows, publish them in one record
batch per partition, mark them, commit); `direct` publishes a transaction's events right
after its commit in partition batches and marks them in the next transaction, the
outbox being the safety net (a sweeper publishes what is left unpublished for 5 s).

It creates its topics (prefix `ceiling.`, six partitions, with the operator's
credentials) if they are missing, and its tables in two schemas of the stack's database
that it drops at the end; senders' coins are put in the ledger directly. It prints
gifts/s end to end and the latency from publishing a request to its gift-sent, the way
`benchmarks.gifts` does, and the CPU each process spent per gift. Run:
`python -m benchmarks.ceiling --count 10000 [--rate R] [--mode relay|direct] [--hot-creator]`.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.partitioner import DefaultPartitioner
from asyncpg.pool import PoolConnectionProxy

from benchmarks import common
from benchmarks.common import Outcomes, Published, Request
from devstack.instances import get_instance, stack_endpoints
from shared.kafka_admin import ensure_topics
from shared.kafka_client import KafkaClientSettings
from shared.settings import ServiceSettings

GIFT_REQUESTED = "ceiling.gift-requested"
DEBIT_REQUESTED = "ceiling.gift-debit-requested"
DEBIT_ANSWERED = "ceiling.gift-debit-answered"
COINS_DEBITED = "ceiling.coins-debited"
DIAMONDS_CREDITED = "ceiling.diamonds-credited"
GIFT_SENT = "ceiling.gift-sent"
GIFT_REJECTED = "ceiling.gift-rejected"
TOPICS = [
    GIFT_REQUESTED,
    DEBIT_REQUESTED,
    DEBIT_ANSWERED,
    COINS_DEBITED,
    DIAMONDS_CREDITED,
    GIFT_SENT,
    GIFT_REJECTED,
]
PARTITIONS = 6  # as the stack's topics
FETCH = ServiceSettings.model_construct()  # defaults only: no environment is read
BATCH = 500  # records per consumed batch and per relay claim, as the services
CATALOG = {"rose": 1, "panda": 5, "love_bang": 25}  # coins per gift, as the gifting catalog
MAX_QUANTITY = 3
COMMISSION_PERCENT = 50
SENDER_COINS = 10**12
SWEEP_AFTER_S = 5.0

GIFTING_SCHEMA = """
CREATE TABLE gifts (
    request_id   text        PRIMARY KEY,
    sender_id    text        NOT NULL,
    creator_id   text        NOT NULL,
    stream_id    text        NOT NULL,
    gift_id      text        NOT NULL,
    quantity     integer     NOT NULL,
    coins        bigint      NOT NULL,
    status       text        NOT NULL,
    reason       text,
    requested_at timestamptz NOT NULL,
    settled_at   timestamptz
);
CREATE TABLE leaderboard (
    stream_id text   NOT NULL,
    sender_id text   NOT NULL,
    coins     bigint NOT NULL,
    PRIMARY KEY (stream_id, sender_id)
);
"""
WALLET_SCHEMA = """
CREATE TABLE inbox (
    message_id   text        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE accounts (
    ref     text   PRIMARY KEY,
    balance bigint NOT NULL
);
CREATE TABLE transactions (
    request_id text        PRIMARY KEY,
    kind       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE entries (
    request_id text   NOT NULL REFERENCES transactions,
    account    text   NOT NULL REFERENCES accounts,
    amount     bigint NOT NULL
);
CREATE INDEX entries_account ON entries (account);
"""
OUTBOX_SCHEMA = """
CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    topic        text        NOT NULL,
    key          text        NOT NULL,
    event_id     text        NOT NULL,
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
"""
ADD_TO_OUTBOX = """
INSERT INTO outbox (topic, key, event_id, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[])
"""
MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"


class Row(NamedTuple):
    """An outbox row: what to publish."""

    id: int
    topic: str
    key: str
    event_id: str
    payload: bytes


Conn = asyncpg.Connection | PoolConnectionProxy

Event = tuple[str, str, dict[str, Any]]
"""(topic, key, body) of an event to write to the outbox."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _columns(events: Sequence[Event]) -> tuple[list[str], list[str], list[str], list[bytes]]:
    """The outbox insert's arrays; every event gets an event_id of its own."""
    topics, keys, ids, payloads = [], [], [], []
    for topic, key, body in events:
        event_id = uuid.uuid4().hex
        body["event_id"] = event_id
        topics.append(topic)
        keys.append(key)
        ids.append(event_id)
        payloads.append(json.dumps(body).encode())
    return topics, keys, ids, payloads


# The worker processes: gifting and wallet.


class Publisher:
    """Outbox rows to Kafka: one record batch per partition, the partition `send()`
    would choose (murmur2 of the key), so each key keeps its partition and order."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}

    async def publish(self, rows: Sequence[Row]) -> None:
        by_partition: dict[tuple[str, int], list[Row]] = defaultdict(list)
        for row in rows:
            partitions = self._partitions.get(row.topic)
            if partitions is None:
                partitions = sorted(await self._producer.partitions_for(row.topic))
                self._partitions[row.topic] = partitions
            key = row.key.encode()
            by_partition[row.topic, self._partitioner(key, partitions, partitions)].append(row)
        acked: list[Awaitable[object]] = []
        for (topic, partition), group in by_partition.items():
            batch = self._producer.create_batch()
            for row in group:
                headers = [("event_id", row.event_id.encode())]
                key = row.key.encode()
                if not batch.append(timestamp=None, key=key, value=row.payload, headers=headers):
                    batch.close()
                    acked.append(await self._producer.send_batch(batch, topic, partition=partition))
                    batch = self._producer.create_batch()
                    batch.append(timestamp=None, key=key, value=row.payload, headers=headers)
            batch.close()
            acked.append(await self._producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*acked)


@dataclass
class Outbox:
    """How a worker's committed outbox rows reach Kafka, in `relay` or `direct` mode."""

    pool: asyncpg.Pool
    publisher: Publisher
    mode: str
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    to_mark: list[int] = field(default_factory=list)
    published: int = 0

    async def add(self, conn: Conn, events: Sequence[Event]) -> list[Row]:
        """Write `events` in the caller's transaction; the rows to publish after commit
        (direct mode). Marks what the last direct publish sent, in the same transaction."""
        if self.to_mark:
            marks, self.to_mark = self.to_mark, []
            await conn.execute(MARK, marks)
        if not events:
            return []
        columns = _columns(events)
        if self.mode == "relay":
            await conn.execute(ADD_TO_OUTBOX, *columns)
            return []
        ids = await conn.fetch(ADD_TO_OUTBOX + " RETURNING id", *columns)
        topics, keys, event_ids, payloads = columns
        return [
            Row(r["id"], topic, key, event_id, payload)
            for r, topic, key, event_id, payload in zip(
                ids, topics, keys, event_ids, payloads, strict=True
            )
        ]

    async def committed(self, rows: list[Row]) -> None:
        """After the commit: publish the rows now (direct), or wake the relay."""
        if self.mode == "relay":
            self.kick.set()
        elif rows:
            await self.publisher.publish(rows)
            self.to_mark.extend(row.id for row in rows)
            self.published += len(rows)

    async def relay(self, stop: asyncio.Event) -> None:
        """Claim, publish, mark, commit; again while batches are full, else wait for a
        kick (or 0.5 s). In direct mode, only rows left unpublished for 5 s."""
        claim = "SELECT id, topic, key, event_id, payload FROM outbox WHERE published_at IS NULL"
        if self.mode == "direct":
            claim += f" AND created_at < clock_timestamp() - interval '{SWEEP_AFTER_S} s'"
        claim += f" ORDER BY id LIMIT {BATCH} FOR UPDATE SKIP LOCKED"
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5 if self.mode == "relay" else 1):
                    await self.kick.wait()
            self.kick.clear()
            while True:
                async with self.pool.acquire() as conn, conn.transaction():
                    rows = [Row(*r) for r in await conn.fetch(claim)]
                    if rows:
                        await self.publisher.publish(rows)
                        await conn.execute(MARK, [row.id for row in rows])
                self.published += len(rows)
                if len(rows) < BATCH:
                    break


Handle = Any  # async (conn, records) -> events


async def consume_loop(
    consumer: AIOKafkaConsumer,
    pool: asyncpg.Pool,
    out: Outbox,
    handle: Handle,
    stop: asyncio.Event,
) -> None:
    """A batch at a time: one transaction, then the outbox's turn, then the offsets."""
    while not stop.is_set():
        fetched = await consumer.getmany(timeout_ms=100, max_records=BATCH)
        records = [record for batch in fetched.values() for record in batch]
        if not records:
            if out.to_mark:  # idle: mark what the last direct publish sent
                marks, out.to_mark = out.to_mark, []
                async with pool.acquire() as conn:
                    await conn.execute(MARK, marks)
            continue
        async with pool.acquire() as conn, conn.transaction():
            rows = await out.add(conn, await handle(conn, records))
        await out.committed(rows)
        await consumer.commit()


async def on_requests(conn: Conn, records: list[ConsumerRecord[Any, Any]]) -> list[Event]:
    """Hop 1: price and check each request; record the new ones; ask for the debit."""
    rows: dict[str, tuple[Any, ...]] = {}
    events: dict[str, Event] = {}
    for record in records:
        body = json.loads(record.value)
        request_id = body["request_id"]
        if request_id in rows:
            continue
        price, quantity = CATALOG.get(body["gift_id"]), body["quantity"]
        ok = price is not None and 1 <= quantity <= MAX_QUANTITY
        ok = ok and body["sender_id"] != body["creator_id"]
        coins = (price or 0) * quantity
        rows[request_id] = (
            request_id,
            body["sender_id"],
            body["creator_id"],
            body["stream_id"],
            body["gift_id"],
            quantity,
            coins,
            "pending" if ok else "rejected",
            None if ok else "invalid_gift",
            datetime.fromisoformat(body["occurred_at"]),
        )
        base = {k: body[k] for k in ("request_id", "sender_id", "creator_id", "stream_id")}
        if ok:
            ask = base | {"gift_id": body["gift_id"], "quantity": quantity, "coins": coins}
            events[request_id] = (DEBIT_REQUESTED, body["sender_id"], ask | {"at": _now()})
        else:
            reason = {"reason": "invalid_gift", "at": _now()}
            events[request_id] = (GIFT_REJECTED, body["sender_id"], base | reason)
    added = await conn.fetch(
        """
        INSERT INTO gifts (request_id, sender_id, creator_id, stream_id, gift_id, quantity,
                           coins, status, reason, requested_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::int[], $7::bigint[], $8::text[], $9::text[], $10::timestamptz[])
        ON CONFLICT (request_id) DO NOTHING
        RETURNING request_id
        """,
        *(list(column) for column in zip(*rows.values(), strict=True)),
    )
    return [events[r["request_id"]] for r in added]


async def on_debits(conn: Conn, records: list[ConsumerRecord[Any, Any]]) -> list[Event]:
    """Hop 2: debit each sender, credit each creator, book the commission, or refuse."""
    requests: dict[str, dict[str, Any]] = {}
    for record in records:
        body = json.loads(record.value)
        body["shard"] = record.partition
        requests.setdefault(body["request_id"], body)
    new = await conn.fetch(
        "INSERT INTO inbox (message_id) SELECT unnest($1::text[]) "
        "ON CONFLICT DO NOTHING RETURNING message_id",
        list(requests),
    )
    todo = [requests[r["message_id"]] for r in new]
    if not todo:
        return []
    refs = sorted(
        {f"coins:{r['sender_id']}" for r in todo}
        | {f"diamonds:{r['creator_id']}" for r in todo}
        | {f"commission:{r['shard']}" for r in todo}
    )
    balances = {
        row["ref"]: row["balance"]
        for row in await conn.fetch(
            "SELECT ref, balance FROM accounts WHERE ref = ANY($1::text[]) ORDER BY ref FOR UPDATE",
            refs,
        )
    }
    tx_ids: list[str] = []
    entry_tx: list[str] = []
    entry_account: list[str] = []
    entry_amount: list[int] = []
    events: list[Event] = []
    extra: list[Event] = []
    for r in todo:
        sender, creator = f"coins:{r['sender_id']}", f"diamonds:{r['creator_id']}"
        base = {k: r[k] for k in ("request_id", "sender_id", "creator_id", "stream_id")}
        if balances.get(sender, 0) < r["coins"] or creator not in balances:
            answer = base | {"status": "refused", "reason": "insufficient_coins", "at": _now()}
            events.append((DEBIT_ANSWERED, r["sender_id"], answer))
            continue
        commission = r["coins"] * COMMISSION_PERCENT // 100
        diamonds = r["coins"] - commission
        platform = f"commission:{r['shard']}"
        for account, amount in ((sender, -r["coins"]), (creator, diamonds), (platform, commission)):
            balances[account] += amount
            entry_tx.append(r["request_id"])
            entry_account.append(account)
            entry_amount.append(amount)
        tx_ids.append(r["request_id"])
        at = _now()
        events.append((DEBIT_ANSWERED, r["sender_id"], base | {"status": "debited", "at": at}))
        spent = {"coins": r["coins"], "balance": balances[sender], "at": at}
        extra.append((COINS_DEBITED, r["sender_id"], base | spent))
        earned = {"diamonds": diamonds, "balance": balances[creator], "at": at}
        extra.append((DIAMONDS_CREDITED, r["creator_id"], base | earned))
    if tx_ids:
        await conn.execute(
            """
            WITH t AS (
                INSERT INTO transactions (request_id, kind) SELECT unnest($1::text[]), 'gift'
            ), e AS (
                INSERT INTO entries (request_id, account, amount)
                SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[])
            )
            UPDATE accounts a SET balance = v.balance
            FROM unnest($5::text[], $6::bigint[]) AS v(ref, balance) WHERE a.ref = v.ref
            """,
            tx_ids,
            entry_tx,
            entry_account,
            entry_amount,
            list(balances),
            list(balances.values()),
        )
    return events + extra  # answers first, as the wallet does


async def on_answers(conn: Conn, records: list[ConsumerRecord[Any, Any]]) -> list[Event]:
    """Hop 3: settle each pending gift once, rank what was sent, announce the outcome."""
    answers: dict[str, dict[str, Any]] = {}
    for record in records:
        body = json.loads(record.value)
        answers.setdefault(body["request_id"], body)
    pending = await conn.fetch(
        "SELECT request_id, sender_id, creator_id, stream_id, coins FROM gifts "
        "WHERE request_id = ANY($1::text[]) AND status = 'pending' ORDER BY request_id FOR UPDATE",
        sorted(answers),
    )
    ids, statuses, reasons = [], [], []
    given: Counter[tuple[str, str]] = Counter()
    events: list[Event] = []
    for gift in pending:
        answer = answers[gift["request_id"]]
        sent = answer["status"] == "debited"
        ids.append(gift["request_id"])
        statuses.append("sent" if sent else "rejected")
        reasons.append(None if sent else answer.get("reason"))
        base = {k: gift[k] for k in ("request_id", "sender_id", "creator_id", "stream_id")}
        if sent:
            given[gift["stream_id"], gift["sender_id"]] += gift["coins"]
            events.append(
                (GIFT_SENT, gift["sender_id"], base | {"coins": gift["coins"], "at": _now()})
            )
        else:
            events.append(
                (GIFT_REJECTED, gift["sender_id"], base | {"reason": answer.get("reason")})
            )
    if ids:
        await conn.execute(
            """
            WITH s AS (
                UPDATE gifts g SET status = v.status, reason = v.reason, settled_at = now()
                FROM unnest($1::text[], $2::text[], $3::text[]) AS v(request_id, status, reason)
                WHERE g.request_id = v.request_id
            )
            INSERT INTO leaderboard (stream_id, sender_id, coins)
            SELECT * FROM unnest($4::text[], $5::text[], $6::bigint[])
            ON CONFLICT (stream_id, sender_id)
            DO UPDATE SET coins = leaderboard.coins + excluded.coins
            """,
            ids,
            statuses,
            reasons,
            [stream for stream, _ in given],
            [sender for _, sender in given],
            list(given.values()),
        )
    return events


async def pinned_consumer(kafka: KafkaClientSettings, topic: str, group: str) -> AIOKafkaConsumer:
    """A consumer of `topic` in `group`, positioned at the end before anything is sent."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka.client_options(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        max_poll_records=BATCH,
        heartbeat_interval_ms=300,
        # The services' defaults: the ceiling fetches as they do.
        fetch_min_bytes=FETCH.consumer_fetch_min_bytes,
        fetch_max_wait_ms=FETCH.consumer_fetch_max_wait_ms,
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    for partition in consumer.assignment():
        await consumer.position(partition)
    return consumer


async def worker(role: str, schema: str, mode: str, run: str) -> None:
    """One of the two processes; says `ready` once its consumers are placed, runs until
    SIGTERM, then prints its CPU seconds and how many rows it published."""
    # Each further worker of a hop joins its groups while the first heartbeats: aiokafka
    # warns of the rebalance, which is expected here and not worth a line per group.
    logging.getLogger("aiokafka.consumer.group_coordinator").setLevel(logging.ERROR)
    endpoints = stack_endpoints(get_instance("default"))
    kafka = endpoints.kafka()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pool = await asyncpg.create_pool(
        endpoints.database(), min_size=3, max_size=3, server_settings={"search_path": schema}
    )
    producer = AIOKafkaProducer(
        **kafka.client_options(), enable_idempotence=True, acks="all", linger_ms=2
    )
    await producer.start()
    out = Outbox(pool, Publisher(producer), mode)
    if role == "gifting":
        loops = [(GIFT_REQUESTED, on_requests), (DEBIT_ANSWERED, on_answers)]
    else:
        loops = [(DEBIT_REQUESTED, on_debits)]
    consumers = [
        (await pinned_consumer(kafka, topic, f"ceiling-{run}-{role}-{topic}"), handle)
        for topic, handle in loops
    ]
    print("ready", flush=True)
    cpu = time.process_time()
    tasks = [asyncio.create_task(consume_loop(c, pool, out, h, stop)) for c, h in consumers]
    tasks.append(asyncio.create_task(out.relay(stop)))

    def failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            print(f"ceiling {role} worker failed: {task.exception()!r}", file=sys.stderr)
            stop.set()

    for task in tasks:
        task.add_done_callback(failed)
    await stop.wait()
    cpu = time.process_time() - cpu
    await asyncio.gather(*tasks, return_exceptions=True)
    for consumer, _ in consumers:
        await consumer.stop()
    await producer.stop()
    await pool.close()
    print(f"cpu {cpu:.3f} published {out.published}", flush=True)


# The driver: schemas, topics, seeding, the two workers, the requests and the figures.


@dataclass
class CeilingRun:
    """What came back: gift-sent / gift-rejected per request, and the workers' CPU."""

    count: int
    published: Published = field(default_factory=Published)
    outcomes: Outcomes = field(default_factory=Outcomes)
    sent: Outcomes = field(default_factory=Outcomes)
    rejected: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def handle(self, topic: str, body: dict[str, Any], now: float) -> None:
        request_id = body.get("request_id")
        if self.outcomes.record(request_id, self.published, now):
            if topic == GIFT_SENT:
                self.sent.record(request_id, self.published, now)
            else:
                self.rejected[str(request_id)] = body.get("reason")

    def done(self) -> bool:
        return len(self.outcomes) >= self.count

    @property
    def elapsed(self) -> float:
        return self.outcomes.last_at - self.published.first_sent

    @property
    def throughput(self) -> float:
        return self.count / self.elapsed


def requests(count: int, senders: int, creators: int, run: str) -> list[Request]:
    """The gift requests, as `benchmarks.gifts` makes them (senders round-robin, every
    gift and quantity mixed, creators in turn), for the ceiling's topic."""
    occurred_at = _now()
    gift_ids = list(CATALOG)
    out = []
    for i in range(count):
        creator = i % creators
        body = {
            "request_id": f"ceiling-{run}-gift-{i}",
            "sender_id": f"ceiling-{run}-sender-{i % senders}",
            "creator_id": f"ceiling-{run}-creator-{creator}",
            "gift_id": gift_ids[i % len(gift_ids)],
            "quantity": 1 + (i // len(gift_ids)) % MAX_QUANTITY,
            "stream_id": f"ceiling-{run}-stream-{creator}",
            "occurred_at": occurred_at,
        }
        out.append(
            (
                f"ceiling-{run}-sender-{i % senders}",
                json.dumps(body).encode(),
                str(body["request_id"]),
            )
        )
    return out


async def create_schemas(conn: asyncpg.Connection, run: str, senders: int, creators: int) -> None:
    gifting, wallet = f"ceiling_{run}_gifting", f"ceiling_{run}_wallet"
    await conn.execute(f"CREATE SCHEMA {gifting}; SET search_path = {gifting}")
    await conn.execute(GIFTING_SCHEMA + OUTBOX_SCHEMA)
    await conn.execute(f"CREATE SCHEMA {wallet}; SET search_path = {wallet}")
    await conn.execute(WALLET_SCHEMA + OUTBOX_SCHEMA)
    await conn.execute(
        "INSERT INTO accounts (ref, balance) SELECT unnest($1::text[]), unnest($2::bigint[])",
        [f"coins:ceiling-{run}-sender-{i}" for i in range(senders)]
        + [f"diamonds:ceiling-{run}-creator-{i}" for i in range(creators)]
        + [f"commission:{p}" for p in range(PARTITIONS)],
        [SENDER_COINS] * senders + [0] * (creators + PARTITIONS),
    )
    await conn.execute("ANALYZE accounts; RESET search_path")


async def start_worker(role: str, run: str, mode: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.ceiling",
        "--worker",
        role,
        "--run-id",
        run,
        "--mode",
        mode,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(60):
        line = await process.stdout.readline()
    if line.strip() != b"ready":
        sys.exit(f"ceiling: the {role} worker did not start")
    return process


async def stop_worker(process: asyncio.subprocess.Process) -> float:
    """SIGTERM, then the worker's CPU seconds from its last line. A worker that has not
    exited 30 s later is killed and its CPU is unknown (NaN); the run's figures, taken
    before, stand."""
    assert process.stdout is not None
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(30):
            out = (await process.stdout.read()).decode().split()
    except TimeoutError:
        print("ceiling: a worker did not stop 30 s after SIGTERM; killed", file=sys.stderr)
        process.kill()
        await process.wait()
        return float("nan")
    await process.wait()
    return float(out[out.index("cpu") + 1]) if "cpu" in out else float("nan")


async def measure(
    count: int,
    rate: float = 0,
    *,
    mode: str = "relay",
    senders: int = 2_000,
    creators: int = 5,
    timeout_s: float = 300,
    replicas: int = 1,
    started: Callable[[str, int], object] | None = None,
) -> CeilingRun:
    """One ceiling run: set up, start the workers (`replicas` of each, sharing their
    consumer groups' partitions; `started` is told each one's name and pid), send, wait
    for every outcome, tear down."""
    endpoints = stack_endpoints(get_instance("default"))
    kafka = endpoints.kafka()  # the operator: creates its topics, reads and writes them
    await ensure_topics(kafka, partitions=PARTITIONS, replication_factor=1, topics=TOPICS)
    run = common.run_id()
    result = CeilingRun(count=count)
    conn = await asyncpg.connect(endpoints.database())
    workers: dict[str, list[asyncio.subprocess.Process]] = {"gifting": [], "wallet": []}
    try:
        await create_schemas(conn, run, senders, creators)
        for role, processes in workers.items():
            for index in range(replicas):
                processes.append(await start_worker(role, run, mode))
                if started is not None:
                    started(f"ceiling-{role}-{index}", processes[-1].pid)
        batch = requests(count, senders, creators, run)
        producer = common.producer(kafka)
        await producer.start()
        listener = await common.listening(kafka, GIFT_SENT, GIFT_REJECTED)
        try:
            collector = asyncio.create_task(common.consume(listener, result.handle, result.done))
            await common.publish(producer, GIFT_REQUESTED, batch, result.published, rate)
            if not await common.finished(collector, timeout_s):
                sys.exit(
                    f"ceiling: timed out after {timeout_s:g} s: "
                    f"{count - len(result.outcomes)} of {count} gifts without an outcome"
                )
        finally:
            await listener.stop()
            await producer.stop()
    finally:
        for role, processes in workers.items():
            result.cpu[role] = sum([await stop_worker(process) for process in processes])
        await conn.execute(
            f"DROP SCHEMA IF EXISTS ceiling_{run}_gifting CASCADE;"
            f"DROP SCHEMA IF EXISTS ceiling_{run}_wallet CASCADE"
        )
        await conn.close()
    return result


def report(result: CeilingRun, rate: float, mode: str, replicas: int = 1) -> None:
    processes = "one process" if replicas == 1 else f"{replicas} processes"
    print(f"ceiling:          {mode} mode, plain aiokafka + asyncpg, {processes} per hop owner")
    print(f"gifts:            {result.count} (offered rate: {rate or 'as fast as possible'}/s)")
    print(f"elapsed:          {result.elapsed:.2f} s (first request -> last outcome)")
    print(f"throughput:       {result.throughput:,.0f} gifts/s end to end")
    print(f"outcomes:         {len(result.sent)} sent, {len(result.rejected)} rejected")
    print(common.latency_line("request -> gift-sent", result.sent.latencies.values()))
    print(common.cpu_line(result.cpu, result.count))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=positive, default=10_000)
    parser.add_argument("--rate", type=float, default=0, help="gifts/s; 0 = unpaced")
    parser.add_argument("--mode", choices=["relay", "direct"], default="relay")
    parser.add_argument("--senders", type=positive, default=2_000)
    parser.add_argument("--creators", type=positive, default=5)
    parser.add_argument("--hot-creator", action="store_true", help="every gift to one creator")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--replicas", type=positive, default=1, help="worker processes per hop")
    parser.add_argument("--worker", choices=["gifting", "wallet"], help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        schema = f"ceiling_{args.run_id}_{args.worker}"
        await worker(args.worker, schema, args.mode, args.run_id)
        return
    creators = 1 if args.hot_creator else args.creators
    result = await measure(
        args.count,
        args.rate,
        mode=args.mode,
        senders=args.senders,
        creators=creators,
        timeout_s=args.timeout,
        replicas=args.replicas,
    )
    report(result, args.rate, args.mode, args.replicas)
    print(f"creators:         {creators}{' (hot creator)' if args.hot_creator else ''}")
    print(f"load average:     {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min)")


if __name__ == "__main__":
    uvloop.run(main())
