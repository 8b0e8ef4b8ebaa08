"""`coinstream setup` gives every topic explicit configs, and corrects them when they drift."""

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared import kafka_admin
from shared.topics import all_topics
from tests.conftest import Infra
from tests.support import delete_topic

pytestmark = pytest.mark.integration

WEEK_MS = str(7 * kafka_admin.DAY_MS)
YEAR_MS = str(365 * kafka_admin.DAY_MS)


async def test_setup_set_explicit_configs_on_every_topic(infra: Infra) -> None:
    configs = await kafka_admin.topic_configs(infra.kafka(), all_topics())
    for topic, config in configs.items():
        dead_letters = topic.endswith(".dlq")
        assert config["retention.ms"] == (YEAR_MS if dead_letters else WEEK_MS), topic
        assert config["min.insync.replicas"] == "1", topic  # one node: one replica
        assert config["unclean.leader.election.enable"] == "false", topic
    assert set(configs) == set(all_topics())


@pytest.fixture
async def scratch_topic(infra: Infra) -> AsyncIterator[str]:
    topic = f"layout-check-{uuid.uuid4().hex[:12]}"
    await kafka_admin.ensure_topics(
        infra.kafka(), partitions=1, replication_factor=1, topics=[topic]
    )
    yield topic
    await delete_topic(infra, topic)


async def test_drifted_configs_are_corrected_and_an_operators_own_are_kept(
    infra: Infra, scratch_topic: str
) -> None:
    admin = AIOKafkaAdminClient(**infra.kafka().client_options())
    await admin.start()
    try:  # an operator shortens retention by mistake and raises the message size on purpose
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    scratch_topic,
                    {"retention.ms": "1000", "max.message.bytes": "2000000"},
                )
            ]
        )
    finally:
        await admin.close()
    layout = kafka_admin.TopicLayout(1, 1, 1)

    report = await kafka_admin.apply_layout(infra.kafka(), layout, topics=[scratch_topic])

    assert (report.created, report.reconfigured, report.mismatched) == ([], [scratch_topic], [])
    config = (await kafka_admin.topic_configs(infra.kafka(), [scratch_topic]))[scratch_topic]
    assert config["retention.ms"] == WEEK_MS
    assert config["max.message.bytes"] == "2000000"
    again = await kafka_admin.apply_layout(infra.kafka(), layout, topics=[scratch_topic])
    assert again.reconfigured == []


async def test_fewer_partitions_than_the_layout_are_reported_not_changed(
    infra: Infra, scratch_topic: str
) -> None:
    report = await kafka_admin.apply_layout(
        infra.kafka(), kafka_admin.TopicLayout(4, 1, 1), topics=[scratch_topic]
    )

    assert report.mismatched == [scratch_topic]
    admin = AIOKafkaAdminClient(**infra.kafka().client_options())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([scratch_topic])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 1  # adding partitions would move keys
