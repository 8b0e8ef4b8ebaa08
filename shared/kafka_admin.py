"""Topic administration and a real readiness probe for Kafka."""

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from shared.kafka_client import KafkaClientSettings
from shared.topics import DLQ_SUFFIX, all_topics

DAY_MS = 24 * 60 * 60 * 1000

# Where a topic config's value comes from (DescribeConfigs v1+): set on the topic itself.
_SET_ON_TOPIC = 1


RETENTION_MS = 7 * DAY_MS
"""How long a topic keeps its records: Kafka's own default, stated."""
DEAD_LETTER_RETENTION_MS = 365 * DAY_MS
"""How long a dead-letter topic keeps its records: each waits for an operator."""


def min_insync_replicas(replication_factor: int) -> int:
    """All replicas but one must hold a write: one broker may be down, none may be lost."""
    return max(1, replication_factor - 1)


@dataclass(frozen=True)
class TopicLayout:
    """How `coinstream setup` creates the topics: partitions and replicas, and the configs
    it sets explicitly on each, so that no topic depends on a broker's defaults."""

    partitions: int
    replication_factor: int
    min_insync_replicas: int
    retention_ms: int = RETENTION_MS
    dead_letter_retention_ms: int = DEAD_LETTER_RETENTION_MS

    def __post_init__(self) -> None:
        if not 1 <= self.min_insync_replicas <= self.replication_factor:
            raise ValueError(
                f"min.insync.replicas {self.min_insync_replicas} must be between 1 and the "
                f"replication factor {self.replication_factor}"
            )

    def configs(self, topic: str) -> dict[str, str]:
        """The configs `setup` owns on `topic`; dead-letter topics keep their records far
        longer, since each one waits for an operator to look at it."""
        dead_letter = topic.endswith(DLQ_SUFFIX)
        retention = self.dead_letter_retention_ms if dead_letter else self.retention_ms
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(retention),
            "min.insync.replicas": str(self.min_insync_replicas),
            "unclean.leader.election.enable": "false",
        }


@dataclass(frozen=True)
class TopicsReport:
    """What `ensure_topics` did: topics created, topics whose configs it corrected, and
    topics it cannot fix by itself (fewer partitions or replicas than the layout)."""

    created: list[str]
    reconfigured: list[str]
    mismatched: list[str]


async def ensure_topics(
    kafka: KafkaClientSettings,
    *,
    partitions: int,
    replication_factor: int,
    topics: list[str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (every topic of the system by default),
    with the default configs; returns the names created."""
    layout = TopicLayout(partitions, replication_factor, min_insync_replicas(replication_factor))
    return (await apply_layout(kafka, layout, topics=topics)).created


async def apply_layout(
    kafka: KafkaClientSettings, layout: TopicLayout, *, topics: list[str] | None = None
) -> TopicsReport:
    """Create the topics that do not exist yet with `layout`, and set `layout`'s configs
    on those that do where they differ (configs an operator set besides are kept)."""
    wanted = topics if topics is not None else all_topics()
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            new = [
                NewTopic(
                    name,
                    layout.partitions,
                    layout.replication_factor,
                    topic_configs=layout.configs(name),
                )
                for name in missing
            ]
            # Another `setup` may have created them first; they exist, which is all we need.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            await _until_led(admin, missing)
        present = [name for name in wanted if name in existing]
        reconfigured = await _correct_configs(admin, layout, present)
        mismatched = await _shape_mismatches(admin, layout, present)
        return TopicsReport(missing, reconfigured, mismatched)
    finally:
        await admin.close()


async def topic_configs(kafka: KafkaClientSettings, topics: list[str]) -> dict[str, dict[str, str]]:
    """The configs set on each topic itself (not a broker default): name -> value."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        return await _set_on_topic(admin, topics)
    finally:
        await admin.close()


async def _set_on_topic(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, dict[str, str]]:
    if not topics:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
    found: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise RuntimeError(
                    f"describing {resource['resource_name']}: {resource['error_message']}"
                )
            found[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"]
                for entry in resource["config_entries"]
                if entry["config_source"] == _SET_ON_TOPIC
            }
    return found


async def _until_led(
    admin: AIOKafkaAdminClient, topics: list[str], *, timeout_s: float = 30.0
) -> None:
    """Wait until the broker asked reports every partition of `topics` with a leader.

    The controller has committed a topic when CreateTopics answers, but each broker learns
    of it a moment later: a client that asks another node at once finds no such topic.
    `setup` returns only when the topics can be used.
    """
    async with asyncio.timeout(timeout_s):
        while True:
            described: list[dict[str, Any]] = await admin.describe_topics(topics)
            unled = [
                topic["topic"]
                for topic in described
                if topic["error_code"]
                or not topic["partitions"]
                or any(p["leader"] < 0 for p in topic["partitions"])
            ]
            if not unled:
                return
            await asyncio.sleep(0.1)


async def _correct_configs(
    admin: AIOKafkaAdminClient, layout: TopicLayout, topics: list[str]
) -> list[str]:
    """AlterConfigs replaces a topic's whole set of configs, so the configs an operator set
    on a topic are sent back with ours."""
    current = await _set_on_topic(admin, topics)
    changes = []
    for name in topics:
        ours = layout.configs(name)
        if any(current[name].get(key) != value for key, value in ours.items()):
            merged = {**current[name], **ours}
            changes.append(ConfigResource(ConfigResourceType.TOPIC, name, merged))
    if changes:
        for response in await admin.alter_configs(changes):
            for resource in response.to_object()["resources"]:
                if resource["error_code"]:
                    raise RuntimeError(
                        f"configuring {resource['resource_name']}: {resource['error_message']}"
                    )
    return [change.name for change in changes]


async def _shape_mismatches(
    admin: AIOKafkaAdminClient, layout: TopicLayout, topics: list[str]
) -> list[str]:
    """Topics with fewer partitions or replicas than the layout. Neither is changed here:
    more partitions move keys to other partitions (and the wallet's platform shards), and
    more replicas need a reassignment plan; docs/operations.md says how."""
    if not topics:
        return []
    described: list[dict[str, Any]] = await admin.describe_topics(topics)
    return [
        topic["topic"]
        for topic in described
        if len(topic["partitions"]) < layout.partitions
        or min(len(p["replicas"]) for p in topic["partitions"]) < layout.replication_factor
    ]


async def brokers_registered(kafka: KafkaClientSettings, *, timeout_s: float = 5.0) -> int:
    """How many brokers the cluster reports (0 when it does not answer)."""
    admin = AIOKafkaAdminClient(**kafka.client_options(), request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            cluster = await admin.describe_cluster()
        return len(cluster["brokers"])
    except Exception:
        return 0
    finally:
        await admin.close()


async def kafka_answers(kafka: KafkaClientSettings, *, timeout_s: float = 5.0) -> bool:
    """True when a broker answers a metadata request (an open port is not enough) to a
    client that authenticated with these settings."""
    return await brokers_registered(kafka, timeout_s=timeout_s) > 0
