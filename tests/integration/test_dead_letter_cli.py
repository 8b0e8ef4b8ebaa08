"""`coinstream dlq list` and `dlq replay`, run as an operator runs them, against real Kafka.

Each test has a topic of its own and its `.dlq` twin; dead letters are written by the
services' own `DeadLetters` from records really read from the original topic.
"""

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry

from devstack import Endpoints
from services.wallet.main import create_app
from services.wallet.settings import WalletSettings
from shared import topics
from shared.consumer import DeadLetters
from shared.kafka_admin import ensure_topics
from tests.support import eventually, in_process, publish, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COINSTREAM = ROOT / ".venv" / "bin" / "coinstream"
PARTITIONS = 3


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


async def coinstream(infra: Endpoints, *args: str) -> Ran:
    """The real command in a process of its own, as an operator runs it."""
    process = await asyncio.create_subprocess_exec(
        str(COINSTREAM),
        *args,
        cwd=ROOT,
        env={**os.environ, **infra.kafka().environment(), "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def read_all(infra: Endpoints, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to its current end, oldest first in each partition."""
    consumer = AIOKafkaConsumer(**infra.kafka().client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


@pytest.fixture
async def topic(infra: Any) -> str:
    """A topic of this test alone, with its dead-letter topic."""
    name = unique("test.dlq-cli")
    await ensure_topics(
        infra.kafka(),
        partitions=PARTITIONS,
        replication_factor=1,
        topics=[name, topics.dlq(name)],
    )
    return name


@pytest.fixture
async def dead_letters(infra: Any) -> AsyncIterator[DeadLetters]:
    """The services' own DeadLetters, on a broker of its own."""
    kafka = infra.kafka()
    broker = KafkaBroker(kafka.servers, security=kafka.faststream_security())
    await broker.start()
    try:
        yield DeadLetters(broker, service="test", registry=CollectorRegistry())
    finally:
        await broker.stop()


async def dead_letter(
    infra: Any,
    dead_letters: DeadLetters,
    topic: str,
    messages: list[tuple[str, bytes, str]],
) -> list[ConsumerRecord[bytes, bytes]]:
    """Publish (key, value, reason) messages to `topic` with a header of their own, read
    them back, and dead-letter each as a service would; returns the original records."""
    producer = AIOKafkaProducer(**infra.kafka().client_options())
    await producer.start()
    try:
        for key, value, _ in messages:
            await producer.send_and_wait(
                topic, value, key=key.encode(), headers=[("trace-id", key.encode())]
            )
    finally:
        await producer.stop()
    records = await read_all(infra, topic)
    by_key = {record.key: record for record in records}
    for key, _, reason in messages:
        await dead_letters.send(by_key[key.encode()], reason=reason, error=f"{reason} in {key}")
    return [by_key[key.encode()] for key, _, _ in messages]


async def test_list_prints_every_dead_letter_with_its_coordinates_and_why(
    infra: Any, dead_letters: DeadLetters, topic: str
) -> None:
    originals = await dead_letter(
        infra,
        dead_letters,
        topic,
        [("k-json", b"not json", "invalid_json"), ("k-msg", b'{"a": 1}', "invalid_message")],
    )

    listed = await coinstream(infra, "dlq", "list", "--topic", topic, "--json")

    assert listed.returncode == 0, listed.stderr
    rows = sorted(listed.json_lines(), key=lambda row: row["key"])
    assert [(r["key"], r["value"], r["reason"]) for r in rows] == [
        ("k-json", "not json", "invalid_json"),
        ("k-msg", '{"a": 1}', "invalid_message"),
    ]
    dlq_records = {r.key: r for r in await read_all(infra, topics.dlq(topic))}
    for row, original in zip(rows, sorted(originals, key=lambda r: r.key or b""), strict=True):
        stored = dlq_records[row["key"].encode()]
        assert (row["dlq_topic"], row["partition"], row["offset"]) == (
            topics.dlq(topic),
            stored.partition,
            stored.offset,
        )
        assert row["coordinates"] == f"{topics.dlq(topic)}:{stored.partition}:{stored.offset}"
        assert row["topic"] == topic and row["service"] == "test"
        assert row["error"] == f"{row['reason']} in {row['key']}" and row["at"]
        assert original.key == stored.key and original.value == stored.value

    # The dead-letter topic's own name works too; the human form has a table and counts.
    human = await coinstream(infra, "dlq", "list", "--topic", topics.dlq(topic))
    assert human.returncode == 0, human.stderr
    assert topics.dlq(topic) in human.stdout and "2 dead letter(s)" in human.stdout
    for row in rows:
        assert f"{row['partition']}:{row['offset']}" in human.stdout
        assert row["reason"] in human.stdout and row["key"] in human.stdout


async def test_an_empty_dead_letter_topic_says_so(infra: Any, topic: str) -> None:
    listed = await coinstream(infra, "dlq", "list", "--topic", topic)

    assert listed.returncode == 0, listed.stderr
    assert f"no dead letters in {topics.dlq(topic)}" in listed.stdout


async def test_replay_by_coordinates_republishes_that_dead_letter_alone(
    infra: Any, dead_letters: DeadLetters, topic: str
) -> None:
    await dead_letter(
        infra,
        dead_letters,
        topic,
        [("k-1", b'{"n": 1}', "processing_failed"), ("k-2", b'{"n": 2}', "processing_failed")],
    )
    dlq_records = {r.key: r for r in await read_all(infra, topics.dlq(topic))}
    chosen = dlq_records[b"k-1"]
    before = await read_all(infra, topic)

    ran = await coinstream(
        infra,
        "dlq",
        "replay",
        "--topic",
        topic,
        "--offset",
        f"{chosen.partition}:{chosen.offset}",
    )

    assert ran.returncode == 0, ran.stderr
    coordinates = f"{topics.dlq(topic)}:{chosen.partition}:{chosen.offset}"
    assert coordinates in ran.stdout and "replaying them again" in ran.stdout
    [copy] = _new(before, await read_all(infra, topic))
    assert (copy.key, copy.value) == (b"k-1", b'{"n": 1}')
    headers = dict(copy.headers)
    assert headers["dlq.replayed-from"] == coordinates.encode()
    assert headers["trace-id"] == b"k-1"  # the original headers travel along
    assert [name for name in headers if name.startswith("dlq.")] == ["dlq.replayed-from"]
    expected = [(k, v) for k, v in chosen.headers if not k.startswith("dlq.")]
    assert list(copy.headers) == [*expected, ("dlq.replayed-from", coordinates.encode())]


async def test_replay_by_reason_takes_only_those(
    infra: Any, dead_letters: DeadLetters, topic: str
) -> None:
    await dead_letter(
        infra,
        dead_letters,
        topic,
        [("k-a", b"a", "invalid_json"), ("k-b", b"b", "idempotency_conflict")],
    )
    before = await read_all(infra, topic)

    ran = await coinstream(infra, "dlq", "replay", "--topic", topic, "--reason", "invalid_json")

    assert ran.returncode == 0, ran.stderr
    after = await read_all(infra, topic)
    assert [(r.key, r.value) for r in _new(before, after)] == [(b"k-a", b"a")]


async def test_a_record_dead_lettered_twice_is_marked_and_replayed_once(
    infra: Any, dead_letters: DeadLetters, topic: str
) -> None:
    # As when a consumer dies after the dead letter was acknowledged but before its
    # offset was committed: the batch comes back and the same record goes again.
    [twice, once] = await dead_letter(
        infra, dead_letters, topic, [("k-r", b"r", "invalid_json"), ("k-s", b"s", "invalid_json")]
    )
    await dead_letters.send(twice, reason="invalid_json", error="invalid_json in k-r")
    letters = {(r.key, r.offset): r for r in await read_all(infra, topics.dlq(topic))}
    [first, repeat] = sorted(
        (
            f"{topics.dlq(topic)}:{r.partition}:{r.offset}"
            for (k, _), r in letters.items()
            if k == b"k-r"
        ),
        key=lambda c: int(c.rsplit(":", 1)[1]),
    )

    listed = await coinstream(infra, "dlq", "list", "--topic", topic, "--json")
    assert listed.returncode == 0, listed.stderr
    repeat_of = {line["coordinates"]: line["repeat_of"] for line in listed.json_lines()}
    assert repeat_of == {first: None, repeat: first, _coordinates_of(letters, b"k-s"): None}
    table = await coinstream(infra, "dlq", "list", "--topic", topic)
    assert f"repeat of {first}" in table.stdout and "1 of them repeat" in table.stdout

    before = await read_all(infra, topic)
    ran = await coinstream(infra, "dlq", "replay", "--topic", topic, "--all")

    assert ran.returncode == 0, ran.stderr
    assert f"skipped {repeat}: a repeat of {first}" in ran.stdout
    copies = sorted((r.key, r.value) for r in _new(before, await read_all(infra, topic)))
    assert copies == [(b"k-r", b"r"), (b"k-s", b"s")]  # each record once
    assert once.key == b"k-s"


def _coordinates_of(
    letters: dict[tuple[bytes | None, int], ConsumerRecord[bytes, bytes]], key: bytes
) -> str:
    [record] = [r for (k, _), r in letters.items() if k == key]
    return f"{record.topic}:{record.partition}:{record.offset}"


async def test_a_dry_run_publishes_nothing(
    infra: Any, dead_letters: DeadLetters, topic: str
) -> None:
    await dead_letter(infra, dead_letters, topic, [("k-dry", b"x", "invalid_json")])
    before = await _ends(infra, topic)

    ran = await coinstream(infra, "dlq", "replay", "--topic", topic, "--all", "--dry-run")

    assert ran.returncode == 0, ran.stderr
    assert "would replay" in ran.stdout and "k-dry" in ran.stdout
    assert await _ends(infra, topic) == before


async def test_unknown_coordinates_fail_and_publish_nothing(
    infra: Any, dead_letters: DeadLetters, topic: str
) -> None:
    await dead_letter(infra, dead_letters, topic, [("k-real", b"x", "invalid_json")])
    real = (await read_all(infra, topics.dlq(topic)))[0]
    before = await _ends(infra, topic)

    ran = await coinstream(
        infra,
        "dlq",
        "replay",
        "--topic",
        topic,
        "--offset",
        f"{real.partition}:{real.offset}",
        "--offset",
        f"{real.partition}:{real.offset + 5}",
    )

    assert ran.returncode != 0
    assert f"{real.partition}:{real.offset + 5}" in ran.stderr
    assert await _ends(infra, topic) == before  # not even the known one


async def test_a_topic_that_does_not_exist_is_an_error(infra: Any) -> None:
    ran = await coinstream(infra, "dlq", "list", "--topic", unique("no.such"))

    assert ran.returncode == 1 and "does not exist" in ran.stderr


@pytest.fixture
async def wallet(service_settings: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(create_app(service_settings(WalletSettings))) as client:
        yield client


async def test_a_dead_letter_of_a_running_service_is_listed(
    infra: Any, wallet: httpx.AsyncClient
) -> None:
    user = unique("user")
    await publish(infra, topics.PURCHASE_COMPLETED, [(user, b"{not json")])

    async def listed() -> list[dict[str, Any]] | None:
        ran = await coinstream(
            infra,
            "dlq",
            "list",
            "--topic",
            topics.PURCHASE_COMPLETED,
            "--json",
            "--limit",
            "0",
        )
        assert ran.returncode == 0, ran.stderr
        return [row for row in ran.json_lines() if row["key"] == user] or None

    [row] = await eventually(listed, timeout_s=30, every_s=0.5)
    assert row["reason"] == "invalid_json" and row["service"] == "wallet"
    assert row["topic"] == topics.PURCHASE_COMPLETED and row["value"] == "{not json"


async def _ends(infra: Endpoints, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**infra.kafka().client_options())
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(
            [TopicPartition(topic, p) for p in range(PARTITIONS)]
        )
        return ends
    finally:
        await consumer.stop()


def _new(
    before: list[ConsumerRecord[bytes, bytes]], after: list[ConsumerRecord[bytes, bytes]]
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of `after` that `before` did not have (a replay acknowledges each copy
    before the command returns, so they are all there)."""
    seen = {(r.partition, r.offset) for r in before}
    return [r for r in after if (r.partition, r.offset) not in seen]
