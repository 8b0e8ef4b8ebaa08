"""Reading and replaying dead letters: what `coinstream dlq list` and `dlq replay` do.

A dead letter is a record of `<topic>.dlq`, written by `shared.consumer.DeadLetters`:
the original key and value unchanged, the original headers plus `dlq.reason`,
`dlq.error`, `dlq.topic`, `dlq.partition`, `dlq.offset`, `dlq.service`, `dlq.at`.
Its coordinates — dead-letter topic, partition, offset — name it for a replay.

Dead-lettering is at least once: a consumer that crashes (or whose batch is rewound)
after a dead letter was acknowledged but before its offset was committed dead-letters
the same record again when the batch comes back. Such a *repeat* names the same origin
(`dlq.topic`, `dlq.partition`, `dlq.offset`) as an earlier dead letter; `repeats` finds
them, `dlq list` marks them and counts them apart, and `dlq replay --all/--reason` skips
them (replaying both would be harmless, the services skip a request they already
processed, but it is noise).

Reading never joins a consumer group and never commits: it assigns every partition,
starts at the oldest record kept and stops at the end offsets taken when it started,
so it always terminates and never moves any service's offsets. A replay publishes
copies to the original topic and leaves the dead-letter topic as it is.
"""

import asyncio
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import topics
from shared.kafka_client import KafkaClientSettings

DLQ_HEADER_PREFIX = "dlq."
REPLAYED_FROM = "dlq.replayed-from"
STUB = "dlq.stub"


class DeadLetterError(Exception):
    """Something an operator must correct: a topic that does not exist, unknown coordinates,
    a read that did not reach the end in time, a replay that stopped part way."""


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic, as it was read."""

    dlq_topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> "DeadLetter":
        return cls(
            dlq_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=record.key,
            value=record.value or b"",
            headers=tuple(record.headers),
        )

    @property
    def coordinates(self) -> str:
        """`<dlq topic>:<partition>:<offset>`: the dead letter's name, unique and stable."""
        return f"{self.dlq_topic}:{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        """The last value of a header, decoded (undecodable bytes replaced); None if absent."""
        values = [value for key, value in self.headers if key == name]
        return values[-1].decode(errors="replace") if values else None

    @property
    def original_topic(self) -> str:
        """Where the message was first published: `dlq.topic`, else the name without `.dlq`."""
        return self.header("dlq.topic") or original_of(self.dlq_topic)

    @property
    def reason(self) -> str:
        return self.header("dlq.reason") or "unknown"

    @property
    def is_stub(self) -> bool:
        """A stand-in for a record too large to dead-letter: its value names the original."""
        return self.header(STUB) is not None

    @property
    def origin(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) of the record that was dead-lettered, from the
        `dlq.*` headers; None when they are missing or not numbers."""
        topic, partition, offset = (
            self.header(f"dlq.{n}") for n in ("topic", "partition", "offset")
        )
        if topic is None or partition is None or offset is None:
            return None
        if not partition.isdigit() or not offset.isdigit():
            return None
        return topic, int(partition), int(offset)

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The original headers (every `dlq.*` one removed) plus `dlq.replayed-from`."""
        kept = [
            (key, value) for key, value in self.headers if not key.startswith(DLQ_HEADER_PREFIX)
        ]
        return [*kept, (REPLAYED_FROM, self.coordinates.encode())]

    def as_json(self) -> dict[str, Any]:
        """The JSON object `dlq list --json` prints: coordinates, origin, why, key, value."""
        return {
            "dlq_topic": self.dlq_topic,
            "partition": self.partition,
            "offset": self.offset,
            "coordinates": self.coordinates,
            "topic": self.original_topic,
            "reason": self.reason,
            "service": self.header("dlq.service"),
            "at": self.header("dlq.at"),
            "error": self.header("dlq.error"),
            "replayed_from": self.header(REPLAYED_FROM),
            "key": None if self.key is None else self.key.decode(errors="replace"),
            "value": self.value.decode(errors="replace"),
        }


@dataclass(frozen=True)
class Replayed:
    """A dead letter published again, and where its copy landed."""

    letter: DeadLetter
    topic: str
    partition: int
    offset: int


def original_of(dlq_topic: str) -> str:
    """`payment.purchase-requested.dlq` -> `payment.purchase-requested`."""
    return dlq_topic.removesuffix(topics.DLQ_SUFFIX)


def dlq_of(topic: str) -> str:
    """The dead-letter topic meant by `topic`, given with or without its `.dlq`."""
    return topic if topic.endswith(topics.DLQ_SUFFIX) else topics.dlq(topic)


def known_dlq_topics() -> list[str]:
    """Every dead-letter topic of the system (`shared.topics.all_topics()`), in its order."""
    return [name for name in topics.all_topics() if name.endswith(topics.DLQ_SUFFIX)]


def parse_offset(text: str) -> tuple[int, int]:
    """`P:O` -> (partition, offset); ValueError otherwise."""
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not PARTITION:OFFSET, e.g. 3:17")
    return int(partition), int(offset)


async def existing_topics(kafka: KafkaClientSettings, names: Iterable[str]) -> dict[str, list[int]]:
    """The partitions of each of `names` that exists; missing topics are left out."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        described = await admin.describe_topics(sorted(set(names)))
    finally:
        await admin.close()
    return {
        item["topic"]: sorted(p["partition"] for p in item["partitions"])
        for item in described
        if item["error_code"] == 0
    }


async def read(
    kafka: KafkaClientSettings, dlq_topics: Sequence[str], *, timeout_s: float = 60.0
) -> list[DeadLetter]:
    """Every dead letter of these topics that exist, by topic, partition and offset (so
    the dead letters of one key, which share a partition, stay in their order).

    Reads from the oldest record kept up to the end offsets taken at the start, without a
    consumer group; raises DeadLetterError if the end is not reached within `timeout_s`.
    """
    found = await existing_topics(kafka, dlq_topics)
    partitions = [TopicPartition(t, p) for t in dlq_topics if t in found for p in found[t]]
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(
        **kafka.client_options(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        try:
            async with asyncio.timeout(timeout_s):
                letters = await _read_until(consumer, ends)
        except TimeoutError:
            raise DeadLetterError(
                f"did not reach the end of the topics in {timeout_s:g}s"
            ) from None
    finally:
        await consumer.stop()
    order = {tp: index for index, tp in enumerate(partitions)}
    return sorted(
        letters, key=lambda d: (order[TopicPartition(d.dlq_topic, d.partition)], d.offset)
    )


def repeats(letters: Iterable[DeadLetter]) -> dict[str, str]:
    """Dead letters of a record dead-lettered before: coordinates -> the coordinates of
    the first dead letter of the same origin (in the order given; oldest first from
    `by_time`). A replayed message dead-lettered again has an origin of its own (its
    copy's offset), so it is not a repeat."""
    first: dict[tuple[str, int, int], str] = {}
    found: dict[str, str] = {}
    for letter in letters:
        origin = letter.origin
        if origin is None:
            continue
        earlier = first.setdefault(origin, letter.coordinates)
        if earlier != letter.coordinates:
            found[letter.coordinates] = earlier
    return found


def by_time(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """Oldest first by record timestamp, across topics and partitions."""
    return sorted(letters, key=lambda d: (d.timestamp_ms, d.dlq_topic, d.partition, d.offset))


async def _read_until(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    pending = dict(ends)
    while pending:
        for tp in list(pending):
            if await consumer.position(tp) >= pending[tp]:
                consumer.pause(tp)  # never read what arrived after the start
                del pending[tp]
        if not pending:
            break
        batch = await consumer.getmany(*pending, timeout_ms=200)
        for tp, records in batch.items():
            letters.extend(DeadLetter.of(r) for r in records if r.offset < ends[tp])
    return letters


def summarize(letters: Iterable[DeadLetter]) -> list[tuple[str, str, int]]:
    """(original topic, reason, count), by topic then reason."""
    counts = Counter((letter.original_topic, letter.reason) for letter in letters)
    return [(topic, reason, n) for (topic, reason), n in sorted(counts.items())]


def select_offsets(
    letters: Sequence[DeadLetter], dlq_topic: str, wanted: Sequence[tuple[int, int]]
) -> list[DeadLetter]:
    """The dead letters of `dlq_topic` at these (partition, offset) pairs, in the order given.

    Raises DeadLetterError naming every pair that is not one of them; then none is chosen.
    """
    by_position = {(d.partition, d.offset): d for d in letters if d.dlq_topic == dlq_topic}
    unknown = [f"{p}:{o}" for p, o in wanted if (p, o) not in by_position]
    if unknown:
        raise DeadLetterError(f"no dead letter in {dlq_topic} at {', '.join(unknown)}")
    return [by_position[pair] for pair in dict.fromkeys(wanted)]


async def replay(kafka: KafkaClientSettings, letters: Sequence[DeadLetter]) -> list[Replayed]:
    """Publish each dead letter again to its original topic, in the order given.

    Same key, same value; headers without the `dlq.*` ones plus `dlq.replayed-from`.
    The producer is idempotent and waits for every in-sync replica (acks=all); each copy
    is acknowledged before the next is sent. The dead letters stay where they are. A
    stub among them (`dlq.stub`) stops the replay before anything is published.
    """
    stubs = [letter.coordinates for letter in letters if letter.is_stub]
    if stubs:
        # Its value is a description, not the message: the original is still in its
        # topic at the coordinates the stub names (while retention keeps it).
        raise DeadLetterError(
            f"stub(s) of records too large to dead-letter cannot be replayed: "
            f"{', '.join(stubs)}; each names its original (topic, partition, offset)"
        )
    targets = {letter.original_topic for letter in letters}
    missing = sorted(targets - set(await existing_topics(kafka, targets)))
    if missing:
        raise DeadLetterError(f"original topic(s) do not exist: {', '.join(missing)}")
    producer = AIOKafkaProducer(
        **kafka.client_options(),
        client_id="coinstream-dlq-replay",
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        return await _send_all(producer, letters)
    finally:
        await producer.stop()


async def _send_all(producer: AIOKafkaProducer, letters: Sequence[DeadLetter]) -> list[Replayed]:
    done: list[Replayed] = []
    for letter in letters:
        try:
            sent = await producer.send_and_wait(
                letter.original_topic,
                letter.value,
                key=letter.key,
                headers=letter.replay_headers(),
            )
        except Exception as error:
            raise DeadLetterError(
                f"replayed {len(done)} of {len(letters)}; {letter.coordinates} failed: {error!r}"
            ) from error
        done.append(Replayed(letter, sent.topic, sent.partition, sent.offset))
    return done


def json_line(letter: DeadLetter, *, repeat_of: str | None = None) -> str:
    """One dead letter as one line of JSON; `repeat_of`: the first dead letter of the
    same record, when this one repeats it (see `repeats`)."""
    return json.dumps({**letter.as_json(), "repeat_of": repeat_of}, ensure_ascii=False)
