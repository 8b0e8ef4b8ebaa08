"""The Kafka side of a service: the broker, the delivery policy, the relay's producer.

Delivery policy, for every subscriber: a group id per service, offsets committed only
after the batch was processed (never FastStream's at-most-once ACK_FIRST), and on an
unexpected error the partition is rewound so nothing is skipped.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from itertools import chain
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import CollectorRegistry

from shared.outbox import OutboxRecord, Publish
from shared.settings import ServiceSettings
from shared.topics import partition_of


def make_broker(settings: ServiceSettings, registry: CollectorRegistry) -> KafkaBroker:
    """A broker whose producer is idempotent and waits for every in-sync replica."""
    return KafkaBroker(
        settings.kafka.servers,
        security=settings.kafka.faststream_security(),
        client_id=f"coinstream-{settings.service_name}",
        # Topics come from `coinstream setup`; a service's principal may not create them.
        allow_auto_create_topics=False,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        middlewares=[KafkaPrometheusMiddleware(registry=registry, app_name=settings.service_name)],
        # One log line per message would drown real problems at thousands per second.
        log_level=logging.DEBUG,
        # FastStream's own logger has its own coloured handler and does not propagate;
        # a plain one sends its lines (topic, group_id, message_id as fields) through
        # shared.logs like every other line.
        logger=logging.getLogger("faststream"),
        # On stop, each consumer waits this long for the batch in hand (then it is
        # cancelled: its transaction rolls back and its offsets stay where they were).
        graceful_timeout=settings.shutdown_batch_timeout_s,
    )


def relay_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """The outbox relay's own producer: idempotent, waits for every in-sync replica.

    The relay publishes thousands of ready-made JSON records a second; going through
    aiokafka directly skips the per-message work of FastStream's publish path, and
    `outbox_publisher` hands it whole batches per partition.
    """
    return AIOKafkaProducer(
        **settings.kafka.client_options(),
        client_id=f"coinstream-{settings.service_name}-relay",
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
    )


def outbox_publisher(producer: AIOKafkaProducer) -> Publish:
    """The relay's way out: the records grouped by partition, one record batch each.

    `send()` per record costs a future, a size estimate and a trip through the
    accumulator each; a batch built here is one of each per partition (about 40% less
    CPU per hop measured). The partition is the one `send()` would choose (the default
    partitioner: murmur2 of the key over the topic's partitions), so keys stay where
    consumers expect them, and records keep their order within a partition. Idempotence
    holds: aiokafka stamps the producer id and sequence on a batch when it drains it,
    whether `send()` or `send_batch()` filled it. A closed batch does not linger.
    """

    async def publish(records: Sequence[OutboxRecord]) -> None:
        of_topic = {t: sorted(await producer.partitions_for(t)) for t in {r.topic for r in records}}
        by_partition: dict[tuple[str, int], list[OutboxRecord]] = defaultdict(list)
        for record in records:
            partitions = of_topic[record.topic]
            partition = partitions[partition_of(record.key, len(partitions))]
            by_partition[record.topic, partition].append(record)
        acked: list[Awaitable[object]] = []
        for (topic, partition), group in by_partition.items():
            acked.extend(await _send_batches(producer, topic, partition, group))
        await asyncio.gather(*acked)

    return publish


async def _send_batches(
    producer: AIOKafkaProducer, topic: str, partition: int, records: Sequence[OutboxRecord]
) -> list[Awaitable[object]]:
    """Append `records` to as few batches as fit (a batch holds `max_batch_size` bytes;
    its first record always fits) and queue them in order."""
    acked: list[Awaitable[object]] = []
    batch = producer.create_batch()
    for record in records:
        headers = [_JSON, ("event_id", record.event_id.encode()), *record.headers]
        if batch.append(timestamp=None, key=record.key, value=record.value, headers=headers):
            continue
        acked.append(await _send(producer, batch, topic, partition))
        batch = producer.create_batch()
        batch.append(timestamp=None, key=record.key, value=record.value, headers=headers)
    acked.append(await _send(producer, batch, topic, partition))
    return acked


async def _send(producer: AIOKafkaProducer, batch: Any, topic: str, partition: int) -> Any:
    batch.close()  # complete: no linger
    return await producer.send_batch(batch, topic, partition=partition)


_JSON = ("content-type", b"application/json")


async def _raw_records(message: Any) -> Any:
    # Bodies are validated by `Inbound.sort`, which dead-letters what fails; FastStream
    # must not decode (and possibly fail on) them first.
    return message.raw_message


class GroupJoined(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells whether a consumer has joined its group: an assignment (even an empty one,
    with more replicas than partitions) was handed to it at least once since it started.
    A service is ready only once every consumer has (see `ServiceKit`)."""

    def __init__(self) -> None:
        self.joined = False

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass  # offsets are committed per batch, before this runs

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.joined = True


IDLE_FETCH_MIN_BYTES = 1
IDLE_FETCH_MAX_WAIT_MS = 500
"""aiokafka's own defaults: a fetch is answered at the first byte, else after half a
second. What a consumer asks with while nothing comes (`FetchPacing`)."""


class FetchPacing:
    """How long the broker holds a consumer's fetches: short and for more records while
    records come, long and for any record once they stop.

    aiokafka sends a broker no new fetch while records fetched from it wait to be
    consumed, so what one fetch returns is the next batch. Answered at the first byte,
    under load it returns what little has arrived and batches stay small, each paying a
    transaction, a commit and a relay batch, until a queue builds up
    (docs/operations.md, "Fetching under load"). Held until `CONSUMER_FETCH_MIN_BYTES`
    are there or `CONSUMER_FETCH_MAX_WAIT_MS` passed, batches grow with the rate
    instead. But a consumer with
    nothing to read would then ask 100 times a second; so once no record has come for
    `idle_after_s`, it goes back to aiokafka's defaults (twice a second, answered at the
    first byte), and the first batch after that puts it back to work.

    aiokafka has no public setter: this sets the two attributes its fetcher builds each
    fetch request from (aiokafka is pinned; tests/unit/test_fetch_pacing.py checks them).
    """

    def __init__(self, settings: ServiceSettings, idle_after_s: float = 1.0) -> None:
        self._busy = (settings.consumer_fetch_min_bytes, settings.consumer_fetch_max_wait_ms)
        self._idle = (IDLE_FETCH_MIN_BYTES, IDLE_FETCH_MAX_WAIT_MS)
        self._idle_after_s = idle_after_s
        self._last_records = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._fetcher: Any = None

    @property
    def busy(self) -> bool:
        return self._timer is not None

    def records_came(self, consumer: Any) -> None:
        """A batch arrived: fetch for more records, briefly, until they stop coming."""
        loop = asyncio.get_running_loop()
        self._last_records = loop.time()
        fetcher = getattr(consumer, "_fetcher", None)
        if self._timer is None or fetcher is not self._fetcher:  # (a restarted consumer)
            self._fetcher = fetcher
            self._set(self._busy)
        if self._timer is None:
            self._timer = loop.call_later(self._idle_after_s, self._check_idle)

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_for = loop.time() - self._last_records
        if quiet_for < self._idle_after_s:
            self._timer = loop.call_later(self._idle_after_s - quiet_for, self._check_idle)
            return
        self._timer = None
        self._set(self._idle)

    def _set(self, pacing: tuple[int, int]) -> None:
        if self._fetcher is not None:
            self._fetcher._fetch_min_bytes, self._fetcher._fetch_max_wait_ms = pacing

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def poll_without_sleeping(subscriber: Any, wait_ms: int) -> None:
    """Make a batch subscriber wait for records inside `getmany`, up to `wait_ms`, and
    never sleep between polls.

    FastStream's batch subscriber calls `getmany(timeout_ms=batch_timeout_ms)` and, when
    nothing came, sleeps `batch_timeout_ms` more. At 10 ms an idle service woke its
    event loop about 260 times a second and spent 31 ms of CPU a second doing it, and a
    record that landed during a sleep waited for the sleep's end. `getmany` returns as
    soon as a fetch brings records, so a longer wait in it adds no latency, and with no
    sleep none is added either. The stop is not held up: the consume loop holds no batch
    while it waits, and FastStream cancels it. Its `get_msg` is replaced on the instance
    (FastStream is pinned; tests/unit/test_subscriptions.py checks the replacement is the one
    that runs)."""

    async def get_msg(consumer: Any) -> tuple[Any, ...]:
        found = await consumer.getmany(timeout_ms=wait_ms, max_records=subscriber.max_records)
        return tuple(chain.from_iterable(found.values()))

    subscriber.get_msg = get_msg


def batch_subscription(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments for `subscriber(...)`: the delivery policy every service uses."""
    return {
        "batch": True,
        "group_id": settings.group_id,
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "auto_offset_reset": "earliest",
        "max_records": settings.consumer_max_records,
        "batch_timeout_ms": settings.consumer_batch_timeout_ms,
        # Idle until records come; then `FetchPacing` holds fetches for more of them.
        "fetch_min_bytes": IDLE_FETCH_MIN_BYTES,
        "fetch_max_wait_ms": IDLE_FETCH_MAX_WAIT_MS,
        # Each replica of a service is one consumer of its group (shared/subscriptions.py);
        # when one joins, the others learn of the rebalance at their next heartbeat.
        # Frequent heartbeats make a (re)start or scale-out take about a second instead
        # of several. The session timeout is how
        # long a replica that died without leaving keeps its partitions (6 s: the
        # broker's default group.min.session.timeout.ms, the lowest it accepts).
        "heartbeat_interval_ms": settings.consumer_heartbeat_interval_ms,
        "session_timeout_ms": settings.consumer_session_timeout_ms,
        "listener": GroupJoined(),
        "decoder": _raw_records,
    }
