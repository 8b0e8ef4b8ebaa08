"""The `infra` fixture gives a real Kafka and a real PostgreSQL, set up for coinstream."""

import asyncio
import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

import devstack
from devstack import Endpoints
from shared.kafka_admin import ensure_topics
from shared.migrations import SERVICES
from shared.topics import all_topics
from tests.conftest import Infra
from tests.support import delete_topic

pytestmark = pytest.mark.integration


async def test_kafka_carries_a_message_on_a_fresh_topic(infra: Infra) -> None:
    topic = f"devstack-check-{uuid.uuid4().hex[:12]}"
    await ensure_topics(infra.kafka(), partitions=1, replication_factor=1, topics=[topic])
    try:
        await _produce(infra, topic, key=b"user-1", value=b"hello")
        record = await _consume_one(infra, topic)
        assert (record.key, record.value) == (b"user-1", b"hello")
    finally:
        await delete_topic(infra, topic)


async def test_setup_created_every_topic(infra: Infra) -> None:
    admin = AIOKafkaAdminClient(**infra.kafka().client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    assert set(all_topics()) <= existing


async def test_postgres_runs_sql_durably_with_every_service_schema(infra: Infra) -> None:
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute("CREATE TEMP TABLE probe (amount_minor bigint NOT NULL)")
        await conn.execute("INSERT INTO probe VALUES (499), (1)")
        assert await conn.fetchval("SELECT sum(amount_minor) FROM probe") == 500
        assert await conn.fetchval("SHOW fsync") == "on"
        schemas = await conn.fetch(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ANY($1)",
            list(SERVICES),
        )
    finally:
        await conn.close()
    assert {row["schema_name"] for row in schemas} == set(SERVICES)


async def test_ensure_infra_again_is_harmless(infra: Infra) -> None:
    if infra.backend != "devstack":
        pytest.skip(f"the {infra.backend} backend is not provisioned by devstack")
    instance = devstack.get_instance("test")
    before = await _infra_pids(instance)

    first = await devstack.ensure_infra(instance)
    second = await devstack.ensure_infra(instance)

    assert first == second == instance.local_endpoints
    assert await _infra_pids(instance) == before  # nothing restarted, nothing added
    assert all(before.values())


async def _produce(infra: Endpoints, topic: str, *, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(**infra.kafka().client_options(), enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _consume_one(infra: Endpoints, topic: str) -> ConsumerRecord[bytes, bytes]:
    consumer = AIOKafkaConsumer(
        topic, **infra.kafka().client_options(), auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        async with asyncio.timeout(15):
            return await consumer.getone()
    finally:
        await consumer.stop()


async def _infra_pids(instance: devstack.Instance) -> dict[str, int | None]:
    return {
        row.name: row.pid
        for row in await devstack.status(instance)
        if row.name in ("kafka", "postgres")
    }
