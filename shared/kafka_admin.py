"""Topic administration and a real readiness probe for Kafka."""

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.kafka_client import KafkaClientSettings
from shared.topics import all_topics


async def ensure_topics(
    kafka: KafkaClientSettings,
    *,
    partitions: int,
    replication_factor: int,
    topics: list[str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    wanted = topics if topics is not None else all_topics()
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            new = [NewTopic(name, partitions, replication_factor) for name in missing]
            # Another `setup` may have created them first; they exist, which is all we need.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        return missing
    finally:
        await admin.close()


async def kafka_answers(kafka: KafkaClientSettings, *, timeout_s: float = 5.0) -> bool:
    """True when a broker answers a metadata request (an open port is not enough) to a
    client that authenticated with these settings."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            await admin.describe_cluster()
        return True
    except Exception:
        return False
    finally:
        await admin.close()
