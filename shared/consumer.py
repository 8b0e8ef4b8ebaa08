"""Consuming a batch: parse it, dead-letter what cannot be processed, apply the rest.

Two kinds of bad message never stop a partition: one that does not parse (bad JSON, a
missing field, a wrong type) and one that parses but can never be applied (a
`PermanentError` from the service, or data the database refuses). The first is found
while parsing; the second by halving a failing batch until the message at fault stands
alone. Both go to `<topic>.dlq`, their neighbours are applied. Anything else is
transient (database down, deadlock, a rebalance race) and the batch is retried: in
place with backoff, or, when the error escapes the handler (Kafka refusing a dead
letter), rewound after a backoff that grows while it repeats (`Stalls`), never skipped.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from faststream import BaseMiddleware
from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ValidationError

from shared import topics
from shared.errors import PermanentError
from shared.logs import record_fields
from shared.retry import backoff_s, until_done
from shared.tracing import Tracing

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# The producer refuses a record over its max_request_size (MessageSizeTooLargeError), the
# broker one over the topic's max.message.bytes (the same error, code 10, or its newer
# names): a record that came compressed can be over either once it is decompressed.
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
_STUB_MAX_KEY = 1024


def record_size(record: ConsumerRecord[Any, Any]) -> int:
    """The bytes of a record as consumed (uncompressed): key, value and headers."""
    headers = sum(len(name.encode()) + len(value or b"") for name, value in record.headers)
    return len(record.key or b"") + len(record.value or b"") + headers


class Stalls(Collector):
    """Consumers that fail on the same offsets again and again: back off, and show it.

    A batch that fails with an error nothing handled (Kafka refused a dead letter, the
    service raised something unexpected) is rewound by the delivery policy
    (NACK_ON_ERROR) and fetched again; `middleware` waits before letting that happen,
    longer after each failure in a row at the same offsets, so a consumer that cannot
    get past a message waits instead of spinning. Nothing is skipped: the batch is
    processed again until it succeeds. Transient failures retried in place (`process`)
    count too.

    Metrics: `coinstream_consumer_retries_total{topic}` counts the retries;
    `coinstream_consumer_stuck_seconds{topic}` is how long the topic's longest-stuck
    partition has been failing at the offset it stands at (0 when none is: a batch
    that succeeds clears the partitions it held).
    """

    def __init__(self, registry: CollectorRegistry, *, max_backoff_s: float = 5.0) -> None:
        self.max_backoff_s = max_backoff_s
        self._retries = Counter(
            "coinstream_consumer_retries",
            "Batches retried after a failure (rewound and fetched again, or retried in place)",
            ["topic"],
            registry=registry,
        )
        # Per partition: the offset it is stuck at, since when, failures in a row there.
        self._stuck: dict[tuple[str, int], tuple[int, float, int]] = {}
        self._topics: set[str] = set()
        registry.register(self)

    def failed(self, records: Sequence[ConsumerRecord[Any, Any]]) -> float:
        """Record a failed batch that will be retried; returns how long to wait first."""
        now = time.monotonic()
        failures = 0
        for (topic, partition), offset in _first_offsets(records).items():
            at, since, count = self._stuck.get((topic, partition), (offset, now, 0))
            if at != offset:  # it moved on and is stuck again further along
                at, since, count = offset, now, 0
            self._stuck[topic, partition] = (at, since, count + 1)
            failures = max(failures, count + 1)
        topic = records[0].topic
        self._topics.add(topic)
        self._retries.labels(topic).inc()
        return backoff_s(failures, max_s=self.max_backoff_s)

    def succeeded(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """The batch was processed: its partitions are past where they were stuck."""
        for topic, partition in _first_offsets(records):
            self._topics.add(topic)
            self._stuck.pop((topic, partition), None)

    def stuck_s(self, topic: str) -> float:
        """How long the longest-stuck partition of `topic` has failed where it stands."""
        now = time.monotonic()
        ages = [now - since for (name, _), (_, since, _) in self._stuck.items() if name == topic]
        return max(ages, default=0.0)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "coinstream_consumer_stuck_seconds",
            "How long the topic's consumer has failed on the same offsets (0: not stuck)",
            labels=["topic"],
        )
        for topic in sorted(self._topics):
            gauge.add_metric([topic], self.stuck_s(topic))
        yield gauge

    def middleware(self, msg: Any, /, *, context: Any) -> "_BackOff":
        """The FastStream broker middleware (a factory, one instance per message)."""
        return _BackOff(msg, context=context, stalls=self)


class _BackOff(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: Any, stalls: Stalls) -> None:
        super().__init__(msg, context=context)
        self._stalls = stalls

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple) else (raw,)
        if not records:
            return await call_next(msg)
        topic = records[0].topic
        try:
            result = await call_next(msg)
        except Exception as error:
            delay = self._stalls.failed(records)
            log.error(
                "%s: batch from %s failed (%s); rewinding in %.2fs, stuck for %.0fs",
                topic,
                _positions(records),
                _describe(error),
                delay,
                self._stalls.stuck_s(topic),
                extra=record_fields(topic=topic),
            )
            # Sleeping here holds this consumer before the rewind and the next fetch; its
            # heartbeats go on in the background, so the group does not evict it.
            await asyncio.sleep(delay)
            raise
        self._stalls.succeeded(records)
        return result


def _first_offsets(records: Iterable[ConsumerRecord[Any, Any]]) -> dict[tuple[str, int], int]:
    """Where each (topic, partition) of a batch starts: where a rewind takes it back."""
    first: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        first[key] = min(first.get(key, record.offset), record.offset)
    return first


def _positions(records: Iterable[ConsumerRecord[Any, Any]]) -> str:
    first = _first_offsets(records)
    return ", ".join(f"[{p}]@{o}" for (_, p), o in sorted(first.items()))


@dataclass(frozen=True)
class Delivery(Generic[M]):
    """A message that parsed, with the record it came in."""

    record: ConsumerRecord[bytes, bytes]
    message: M


class DeadLetters:
    """Sends messages that cannot be processed to `<topic>.dlq`: key, value and headers
    unchanged (header values stay bytes, a null one stays null).

    Headers say why (`dlq.reason`, `dlq.error`) and where it came from
    (`dlq.topic`, `dlq.partition`, `dlq.offset`, `dlq.service`, `dlq.at`). A record the
    producer or the broker refuses as too large goes as a stub instead (`dlq.stub`,
    `dlq.size` and a JSON body naming its coordinates), so that no legal record can stop
    a partition. Built on a service's broker, it also hooks `Stalls` into it.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        service: str,
        registry: CollectorRegistry,
        tracing: Tracing | None = None,
        group: str | None = None,
    ) -> None:
        self._broker = broker
        self._service = service
        # The service's tracing, for `process` (its batches' spans); off by default.
        self.tracing = tracing or Tracing.off(service)
        self.group = group
        self._counter = Counter(
            "coinstream_dead_letters",
            "Messages sent to a dead-letter topic",
            ["topic", "reason"],
            registry=registry,
        )
        self.stalls = Stalls(registry)
        broker.add_middleware(self.stalls.middleware)

    async def send(self, record: ConsumerRecord[bytes, bytes], *, reason: str, error: str) -> None:
        """Dead-letter one record; returns once the broker has it (before the offset moves)."""
        about = self._about(record, reason=reason, error=error)
        try:
            await self._publish(record.topic, record.key, record.value, [*record.headers, *about])
        except _TOO_LARGE as refused:
            await self._send_stub(record, reason=reason, error=error, refused=refused)
        self._counter.labels(record.topic, reason).inc()
        if self.tracing.enabled:
            self.tracing.dead_lettered(record, reason)
        log.warning(
            "dead-lettered %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            extra=_fields_of(record),
        )

    async def _send_stub(
        self, record: ConsumerRecord[bytes, bytes], *, reason: str, error: str, refused: Exception
    ) -> None:
        """What stands for a record too large to re-publish: its coordinates, size and why.

        The original stays in its topic (while retention keeps it), where the coordinates
        find it; its headers and an oversized key are left out, as they may be the bulk.
        """
        size = record_size(record)
        stub = {
            "dead_letter_stub": True,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp,
            "size": size,
            "reason": reason,
            "error": error[:2000],
            "refused": _describe(refused)[:2000],
            "service": self._service,
        }
        key = record.key if record.key is None or len(record.key) <= _STUB_MAX_KEY else None
        headers = [
            *self._about(record, reason=reason, error=error),
            ("dlq.stub", b"too_large"),
            ("dlq.size", str(size).encode()),
        ]
        await self._publish(record.topic, key, json.dumps(stub).encode(), headers)
        log.error(
            "%s[%d]@%d (%d bytes) is too large to dead-letter; sent a stub naming it: %s",
            record.topic,
            record.partition,
            record.offset,
            size,
            refused,
            extra=_fields_of(record),
        )

    def _about(
        self, record: ConsumerRecord[bytes, bytes], *, reason: str, error: str
    ) -> list[tuple[str, bytes | None]]:
        about = {
            "dlq.reason": reason,
            "dlq.error": error[:2000],
            "dlq.topic": record.topic,
            "dlq.partition": str(record.partition),
            "dlq.offset": str(record.offset),
            "dlq.service": self._service,
            "dlq.at": datetime.now(UTC).isoformat(),
        }
        return [(name, text.encode(errors="replace")) for name, text in about.items()]

    async def _publish(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
    ) -> None:
        # FastStream publishes header values as text only; a dead letter keeps the
        # original's as they are (any bytes, or null), so it goes through the broker's own
        # aiokafka producer: idempotent, acks=all, as every other record of the service.
        if key is None and value is None:
            value = b""  # aiokafka refuses a record with neither key nor value
        await self._producer().send_and_wait(topics.dlq(topic), value, key=key, headers=headers)

    def _producer(self) -> AIOKafkaProducer:
        fast_producer: Any = self._broker.config.producer
        producer: AIOKafkaProducer = fast_producer._producer.producer
        return producer

    async def sort(
        self, records: tuple[ConsumerRecord[bytes, bytes], ...], model: type[M]
    ) -> list[Delivery[M]]:
        """Parse a batch: what validates is returned in order, the rest is dead-lettered."""
        deliveries: list[Delivery[M]] = []
        for record in records:
            try:
                message = model.model_validate_json(record.value or b"")
            except ValidationError as error:
                reason = "invalid_json" if _is_json_error(error) else "invalid_message"
                await self.send(record, reason=reason, error=_summary(error))
                continue
            deliveries.append(Delivery(record, message))
        return deliveries


def _is_json_error(error: ValidationError) -> bool:
    return any(item["type"] in {"json_invalid", "json_type"} for item in error.errors())


def _summary(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or '<message>'}: {item['msg']}"
        for item in error.errors()
    )


def is_permanent(error: BaseException) -> bool:
    """True when retrying cannot help: the message itself is at fault."""
    if isinstance(error, asyncpg.UniqueViolationError):
        return False  # two replicas racing over one message during a rebalance: retry
    return isinstance(
        error,
        PermanentError
        | asyncpg.DataError
        | asyncpg.IntegrityConstraintViolationError
        | asyncpg.RaiseError,
    )


async def process(
    deliveries: Sequence[Delivery[M]],
    apply: Callable[[list[M]], Awaitable[object]],
    dead_letters: "DeadLetters",
) -> None:
    """Apply a batch in one call; retry transient failures; isolate permanent ones.

    With tracing on, each record gets its spans (shared/tracing.py), and what the batch
    writes to the outbox carries the context of the record that caused it."""
    if not deliveries:
        return
    tracing = dead_letters.tracing
    if not tracing.enabled:
        await _process(deliveries, apply, dead_letters)
        return
    with tracing.handling(
        [d.record for d in deliveries],
        [getattr(d.message, "request_id", None) for d in deliveries],
        group=dead_letters.group,
    ):
        await _process(deliveries, apply, dead_letters)


async def _process(
    deliveries: Sequence[Delivery[M]],
    apply: Callable[[list[M]], Awaitable[object]],
    dead_letters: "DeadLetters",
) -> None:
    if not deliveries:
        return
    records = [d.record for d in deliveries]
    try:
        await until_done(
            lambda: apply([d.message for d in deliveries]),
            retry_if=lambda error: not is_permanent(error),
            on_retry=lambda _: dead_letters.stalls.failed(records),
        )
    except Exception as error:
        if not is_permanent(error):
            raise
        if len(deliveries) == 1:
            reason = getattr(error, "reason", "processing_failed")
            await dead_letters.send(deliveries[0].record, reason=reason, error=_describe(error))
            return
        # Halves in order: the messages around the one at fault keep their sequence.
        middle = len(deliveries) // 2
        await _process(deliveries[:middle], apply, dead_letters)
        await _process(deliveries[middle:], apply, dead_letters)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _fields_of(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    """What identifies a record in a log line: its position and, if it has one, its
    event_id header (the body may be what is wrong, so it is not read)."""
    ids = [value for name, value in record.headers if name == "event_id"]
    event_id = ids[0].decode(errors="replace") if ids else None
    return record_fields(
        event_id=event_id, topic=record.topic, partition=record.partition, offset=record.offset
    )
