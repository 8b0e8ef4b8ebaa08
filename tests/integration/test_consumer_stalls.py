"""Consumers that nothing stops: any legal record can be dead-lettered, one too large to
re-publish goes as a stub naming it, and a failure that repeats on the same offsets backs
off and shows in the metrics, against real Kafka."""

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from shared import topics
from shared.consumer import DeadLetters, process
from shared.dead_letters import DeadLetter, DeadLetterError, replay
from shared.kafka_admin import ensure_topics
from tests.support import eventually, unique

pytestmark = pytest.mark.integration


class Note(BaseModel):
    n: int


@pytest.fixture
async def topic(infra: Any) -> str:
    """A one-partition topic of this test alone, with its dead-letter topic."""
    name = unique("test.stalls")
    await ensure_topics(
        infra.kafka(), partitions=1, replication_factor=1, topics=[name, topics.dlq(name)]
    )
    return name


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def broker(infra: Any) -> KafkaBroker:
    kafka = infra.kafka()
    return KafkaBroker(kafka.servers, security=kafka.faststream_security())


@pytest.fixture
async def dead_letters(broker: KafkaBroker, registry: CollectorRegistry) -> DeadLetters:
    return DeadLetters(broker, service="test", registry=registry)


@pytest.fixture
async def started(broker: KafkaBroker, dead_letters: DeadLetters) -> AsyncIterator[DeadLetters]:
    await broker.start()
    try:
        yield dead_letters
    finally:
        await broker.stop()


Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]


async def produce(infra: Any, topic: str, records: list[Record], **options: Any) -> None:
    producer = AIOKafkaProducer(**infra.kafka().client_options(), **options)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def read_all(infra: Any, topic: str, **options: Any) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the one-partition `topic` up to its current end."""
    consumer = AIOKafkaConsumer(
        **infra.kafka().client_options(), enable_auto_commit=False, **options
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        records: list[ConsumerRecord[bytes, bytes]] = []
        while await consumer.position(tp) < end:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def without_dlq(headers: Any) -> list[tuple[str, bytes | None]]:
    return [(name, value) for name, value in headers if not name.startswith("dlq.")]


async def test_any_legal_record_is_dead_lettered_as_it_was(
    infra: Any, started: DeadLetters, topic: str
) -> None:
    odd: list[Record] = [
        (b"k-null", b"{}", [("trace", None), ("trace", b"again")]),  # null, repeated
        (b"k-binary", b"\xff\xfe not utf-8", [("sig", b"\xff\x00\xfe")]),
        (None, b"keyless", [("h", b"v")]),
        (b"k-empty", b"", []),
        (b"k-tombstone", None, [("h", None)]),
    ]
    await produce(infra, topic, odd)
    originals = await read_all(infra, topic)
    assert len(originals) == len(odd)

    for record in originals:
        await started.send(record, reason="invalid_json", error="odd")

    letters = await read_all(infra, topics.dlq(topic))
    assert [(r.key, r.value, without_dlq(r.headers)) for r in letters] == [
        (key, value, headers) for key, value, headers in odd
    ]
    for letter, original in zip(letters, originals, strict=True):
        dlq = {name: value for name, value in letter.headers if name.startswith("dlq.")}
        assert dlq["dlq.offset"] == str(original.offset).encode()
        assert dlq["dlq.topic"] == topic.encode() and dlq["dlq.reason"] == b"invalid_json"


async def test_a_record_too_large_to_republish_goes_as_a_stub_naming_it(
    infra: Any, started: DeadLetters, topic: str, registry: CollectorRegistry
) -> None:
    # Compressed it is a few kilobytes, well under the broker's limit; decompressed it is
    # twice the producer's default max_request_size (1 MiB), so it cannot go out again.
    big = b'{"n": 1, "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    await produce(
        infra,
        topic,
        [(b"k-big", big, [("trace", b"t-1")]), (b"k-next", b"next", [])],
        compression_type="gzip",
        max_request_size=4 * 1024 * 1024,
    )
    [original, following] = await read_all(infra, topic)
    assert original.value == big

    await started.send(original, reason="invalid_message", error="too big to parse")
    await started.send(following, reason="invalid_json", error="after the big one")

    [stub, after] = await read_all(infra, topics.dlq(topic))
    body = json.loads(stub.value)
    assert body["dead_letter_stub"] is True
    assert (body["topic"], body["partition"], body["offset"]) == (topic, 0, original.offset)
    assert body["size"] >= len(big) and body["reason"] == "invalid_message"
    assert body["service"] == "test" and "MessageSizeTooLarge" in body["refused"]
    headers = dict(stub.headers)
    assert headers["dlq.stub"] == b"too_large" and headers["dlq.offset"] == b"%d" % original.offset
    assert headers["dlq.reason"] == b"invalid_message" and stub.key == b"k-big"
    assert (after.key, after.value) == (b"k-next", b"next")  # the partition moved on
    with pytest.raises(DeadLetterError, match="stub"):  # a description is not the message
        await replay(infra.kafka(), [DeadLetter.of(after), DeadLetter.of(stub)])
    assert len(await read_all(infra, topic)) == 2  # nothing was published
    counted = registry.get_sample_value(
        "coinstream_dead_letters_total", {"topic": topic, "reason": "invalid_message"}
    )
    assert counted == 1


async def test_a_record_the_broker_refuses_as_too_large_goes_as_a_stub(
    infra: Any, started: DeadLetters
) -> None:
    # A dead-letter topic whose own limit is below the record: the producer sends it and
    # the broker answers MESSAGE_TOO_LARGE.
    topic = unique("test.stalls-small")
    admin = AIOKafkaAdminClient(**infra.kafka().client_options())
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topic, 1, 1),
                NewTopic(topics.dlq(topic), 1, 1, topic_configs={"max.message.bytes": "2000"}),
            ]
        )
    finally:
        await admin.close()
    await produce(infra, topic, [(b"k-mid", b"y" * 20_000, [])])
    [original] = await eventually(lambda: read_all(infra, topic), timeout_s=10)

    await started.send(original, reason="processing_failed", error="x")

    [stub] = await read_all(infra, topics.dlq(topic))
    body = json.loads(stub.value)
    assert (body["topic"], body["offset"], body["size"]) == (topic, original.offset, 20_005)
    assert dict(stub.headers)["dlq.stub"] == b"too_large"


async def _raw(message: Any) -> Any:
    return message.raw_message


def subscribe(broker: KafkaBroker, topic: str) -> Callable[[Any], Any]:
    """The services' delivery policy (shared/broker.py) on a group of this test's own."""
    return broker.subscriber(
        topic,
        batch=True,
        group_id=unique("test-stalls"),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=300,
        fetch_max_wait_ms=50,  # a rewound batch comes back at once: only backoff slows it
        decoder=_raw,
    )


def metric(registry: CollectorRegistry, name: str, topic: str) -> float:
    return registry.get_sample_value(name, {"topic": topic}) or 0.0


async def test_a_failure_that_repeats_backs_off_shows_and_skips_nothing(
    infra: Any,
    broker: KafkaBroker,
    dead_letters: DeadLetters,
    registry: CollectorRegistry,
    topic: str,
) -> None:
    calls: list[float] = []
    applied: list[int] = []
    broken = True

    @subscribe(broker, topic)
    async def on_note(message: KafkaMessage) -> None:
        calls.append(time.monotonic())
        if broken:
            # Escapes every handling: the batch is rewound and fetched again.
            raise RuntimeError("dead-letter topic unreachable")
        deliveries = await dead_letters.sort(message.raw_message, Note)
        applied.extend(d.message.n for d in deliveries)

    await produce(infra, topic, [(b"k", b'{"n": 1}', []), (b"k", b'{"n": 2}', [])])
    await broker.start()
    try:
        await eventually(lambda: _at_least(calls, 1), timeout_s=30)
        await asyncio.sleep(5.0)
        failures = len(calls)
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(calls)]
        # Without backoff a rewound batch is fetched again within a fraction of a second,
        # dozens of times in 5 s; with it the waits double (with jitter) up to 5 s.
        assert 3 <= failures <= 10, gaps
        assert max(gaps) >= 0.7 and gaps[-1] > gaps[0], gaps
        retries = metric(registry, "coinstream_consumer_retries_total", topic)
        assert retries >= failures - 1
        assert metric(registry, "coinstream_consumer_stuck_seconds", topic) >= 4.5

        broken = False
        await eventually(lambda: _at_least(applied, 2), timeout_s=30)
        assert applied == [1, 2]  # nothing skipped, in order
        assert metric(registry, "coinstream_consumer_stuck_seconds", topic) == 0.0
    finally:
        await broker.stop()


async def test_retries_in_place_count_and_show_as_stuck(
    infra: Any,
    broker: KafkaBroker,
    dead_letters: DeadLetters,
    registry: CollectorRegistry,
    topic: str,
) -> None:
    attempts: list[int] = []
    stuck_seen: list[float] = []

    async def apply(notes: list[Note]) -> None:
        attempts.append(len(notes))
        stuck_seen.append(metric(registry, "coinstream_consumer_stuck_seconds", topic))
        if len(attempts) < 4:
            raise ConnectionError("database down")

    @subscribe(broker, topic)
    async def on_note(message: KafkaMessage) -> None:
        await process(await dead_letters.sort(message.raw_message, Note), apply, dead_letters)

    await produce(infra, topic, [(b"k", b'{"n": 1}', [])])
    await broker.start()
    try:
        await eventually(lambda: _at_least(attempts, 4), timeout_s=30)
        await eventually(
            lambda: _zero(metric(registry, "coinstream_consumer_stuck_seconds", topic)),
            timeout_s=10,
        )
    finally:
        await broker.stop()
    assert metric(registry, "coinstream_consumer_retries_total", topic) == 3
    assert stuck_seen[0] == 0 and stuck_seen[-1] > 0


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _zero(value: float) -> bool:
    return value == 0.0
