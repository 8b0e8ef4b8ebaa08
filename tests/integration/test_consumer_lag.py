"""Consumer lag and the oldest unprocessed record's age (shared/lag.py) against a real
Kafka: a consumer of a test's own topic, offsets committed by hand, a clock the test moves."""

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from shared.lag import ConsumerLag
from tests.support import delete_topic, eventually, unique


async def produce(infra: Any, topic: str, partition: int, count: int) -> None:
    producer = AIOKafkaProducer(**infra.kafka().client_options())
    await producer.start()
    try:
        for n in range(count):
            await producer.send_and_wait(topic, f"r{n}".encode(), partition=partition)
    finally:
        await producer.stop()


async def test_lag_and_age_follow_the_committed_offsets(infra: Any) -> None:
    topic = unique("test.lag")
    admin = AIOKafkaAdminClient(**infra.kafka().client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        topic,
        group_id=unique("test-lag"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **infra.kafka().client_options(),
    )
    try:
        await produce(infra, topic, 0, 6)
        await produce(infra, topic, 1, 3)
        await consumer.start()

        async def assigned() -> bool:
            return len(consumer.assignment()) == 2

        await eventually(assigned, timeout_s=30)
        now = [1000.0]
        registry = CollectorRegistry()
        lag = ConsumerLag(registry, lambda: [consumer], interval_s=15, clock=lambda: now[0])

        def value(name: str, partition: int) -> float | None:
            labels = {"topic": topic, "partition": str(partition)}
            return registry.get_sample_value(f"coinstream_consumer_{name}", labels)

        # Nothing committed yet: every record is unprocessed, first seen now.
        await lag.sample()
        assert (value("lag", 0), value("lag", 1)) == (6, 3)
        assert (value("oldest_unprocessed_seconds", 0), value("oldest_unprocessed_seconds", 1)) == (
            0,
            0,
        )

        now[0] = 1030.0
        await lag.sample()
        assert value("oldest_unprocessed_seconds", 0) == 30

        # Partition 0 processed its six, then got two more: its oldest is the new ones'.
        await consumer.commit({TopicPartition(topic, 0): 6})
        await produce(infra, topic, 0, 2)
        now[0] = 1040.0
        await lag.sample()
        assert (value("lag", 0), value("oldest_unprocessed_seconds", 0)) == (2, 0)
        assert (value("lag", 1), value("oldest_unprocessed_seconds", 1)) == (3, 40)

        # Partition 1 catches up: no lag, no age.
        await consumer.commit({TopicPartition(topic, 1): 3})
        now[0] = 1050.0
        await lag.sample()
        assert (value("lag", 1), value("oldest_unprocessed_seconds", 1)) == (0, 0)
        assert value("oldest_unprocessed_seconds", 0) == 10
        assert registry.get_sample_value("coinstream_consumer_lag_sampled_timestamp_seconds")
    finally:
        await consumer.stop()
        await delete_topic(infra, topic)
