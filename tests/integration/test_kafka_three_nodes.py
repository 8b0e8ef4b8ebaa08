"""`make up KAFKA_NODES=3`: three Kafka nodes, three replicas of every topic, two in sync.

A node is killed while an idempotent producer writes with acks=all: every record arrives
exactly once, and the node, started again, catches up until every partition has its
three replicas in sync again.
"""

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from devstack import kafka
from devstack.instances import Instance
from shared import kafka_admin
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A stack of its own, beside `test`'s, on ports no other instance uses, all below Linux's
# ephemeral range (32768-60999): a killed node restarted while clients reconnect must not
# find its port taken as some connection's local port.
CLUSTER = Instance("kafka3-check", 23092, 23093, 23432, 23081)
TOPIC = "payment.purchase-requested"
RECORDS = 3000


@pytest.fixture
async def cluster(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Instance]:
    monkeypatch.setenv("KAFKA_NODES", "3")
    await kafka.stop_broker(CLUSTER)  # leftovers of an interrupted run
    shutil.rmtree(CLUSTER.root, ignore_errors=True)
    try:
        await kafka.ensure_running(CLUSTER)
        yield CLUSTER
    finally:
        await kafka.stop_broker(CLUSTER)
        shutil.rmtree(CLUSTER.root, ignore_errors=True)


async def test_a_killed_node_loses_and_doubles_nothing(cluster: Instance) -> None:
    operator = cluster.local_endpoints.kafka()
    report = await kafka_admin.apply_layout(
        operator, kafka_admin.TopicLayout(6, 3, 2), topics=[TOPIC]
    )
    assert report.created == [TOPIC]

    async def three_replicas() -> bool:  # every node has heard of the topic
        return (await _replicas(cluster))[0] == {3}

    await eventually(three_replicas, timeout_s=30, every_s=0.5)
    producer = AIOKafkaProducer(
        **operator.client_options(), enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        sent = []
        for n in range(RECORDS):
            if n == RECORDS // 3:
                assert await kafka.kill_node(cluster, 2)
            sent.append(await producer.send(TOPIC, str(n).encode(), key=f"user-{n % 50}".encode()))
            if n % 100 == 0:
                await asyncio.sleep(0.01)  # a steady stream, not one burst
        await asyncio.gather(*sent)
    finally:
        await producer.stop()

    assert sorted(await _read_all(cluster)) == list(range(RECORDS))

    await kafka.ensure_running(cluster)  # node 2 comes back and catches up

    async def all_in_sync() -> bool:
        replicas, in_sync = await _replicas(cluster)
        return replicas == in_sync == {3}

    await eventually(all_in_sync, timeout_s=90, every_s=1.0)


async def _read_all(cluster: Instance) -> list[int]:
    consumer = AIOKafkaConsumer(
        TOPIC,
        **cluster.local_endpoints.kafka().client_options(),
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    values: list[int] = []
    try:
        while len(values) < RECORDS:
            batches = await consumer.getmany(timeout_ms=30_000)
            if not batches:
                break
            values += [int(r.value) for rs in batches.values() for r in rs if r.value]
        extra = await consumer.getmany(timeout_ms=1000)  # nothing beyond: no duplicates
        values += [int(r.value) for rs in extra.values() for r in rs if r.value]
    finally:
        await consumer.stop()
    return values


async def _replicas(cluster: Instance) -> tuple[set[int], set[int]]:
    """The replica counts and in-sync replica counts across the topic's partitions."""
    admin = AIOKafkaAdminClient(**cluster.local_endpoints.kafka().client_options())
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([TOPIC])
    finally:
        await admin.close()
    partitions = topic["partitions"]
    return {len(p["replicas"]) for p in partitions}, {len(p["isr"]) for p in partitions}
