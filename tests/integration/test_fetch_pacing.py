"""A service's consumer against real Kafka: its fetches wait for more records while
records come, and go back to aiokafka's defaults once they stop (shared/broker.py,
FetchPacing), so an idle replica asks twice a second and a busy one gets full batches."""

from typing import Any, ClassVar

import pytest
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from shared import topics
from shared.consumer import DeadLetters
from shared.kafka_admin import ensure_topics
from shared.lag import subscriber_consumers
from shared.settings import ServiceSettings
from shared.subscriptions import Subscriptions, UseCase
from tests.support import eventually, unique

pytestmark = pytest.mark.integration


class Note(BaseModel):
    n: int


class PacedSettings(ServiceSettings):
    service_name: ClassVar[str] = "paced"


async def test_fetches_wait_for_more_while_records_come_and_not_when_idle(infra: Any) -> None:
    topic = unique("test.pacing")
    await ensure_topics(
        infra.kafka(), partitions=2, replication_factor=1, topics=[topic, topics.dlq(topic)]
    )
    kafka = infra.kafka()
    broker = KafkaBroker(kafka.servers, security=kafka.faststream_security())
    applied: list[int] = []

    async def note(notes: list[Note]) -> None:
        applied.extend(n.n for n in notes)

    consumed = Subscriptions[Any]()

    @consumed.topic(topic, Note)
    def on_note(service: Any) -> UseCase:
        return note

    settings = PacedSettings.model_construct(consumer_group_prefix=unique("test-pacing"))
    dead_letters = DeadLetters(broker, service="paced", registry=CollectorRegistry())
    broker.include_router(consumed.router(object(), dead_letters, settings))
    await broker.start()
    producer = AIOKafkaProducer(**kafka.client_options())
    await producer.start()
    try:
        [consumer] = subscriber_consumers(broker.subscribers)
        fetcher = consumer._fetcher

        def pacing() -> tuple[int, int]:
            return fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms

        assert pacing() == (1, 500)  # idle from the start

        async def busy() -> bool:
            return pacing() == (16384, 10)

        for n in range(20):
            await producer.send_and_wait(topic, b'{"n": %d}' % n, key=b"k%d" % n)
        await eventually(busy, timeout_s=30)

        async def all_applied() -> bool:
            return sorted(applied) == list(range(20))

        await eventually(all_applied, timeout_s=30)

        async def idle() -> bool:
            return pacing() == (1, 500)

        await eventually(idle, timeout_s=5)  # a second without records

        await producer.send_and_wait(topic, b'{"n": 20}', key=b"k")
        await eventually(busy, timeout_s=30)
    finally:
        await producer.stop()
        await broker.stop()
