"""The local stack's Kafka layouts (one node or three) and the topic configs `setup` sets."""

import shutil

import pytest

from devstack import kafka
from devstack.errors import DevstackError
from devstack.instances import Instance
from shared import kafka_admin
from shared.kafka_client import KafkaClientSettings
from shared.settings import InfraSettings

INSTANCE = Instance("layout-check", 23092, 23093, 23432, 23081)


def _node(node_id: int, voters: list[str] | None) -> dict[str, str]:
    return kafka.broker_properties(
        broker_password="pw",
        listeners={"SASL_SSL": ("127.0.0.1:9092", "127.0.0.1:9092")},
        controller="127.0.0.1:9093",
        keystore="k.pem",
        truststore="ca.pem",
        log_dir="/tmp/data",
        node_id=node_id,
        voters=voters,
    )


def test_a_single_node_is_its_own_quorum_with_one_replica() -> None:
    single = _node(1, None)
    assert single["node.id"] == "1"
    assert single["controller.quorum.voters"] == "1@127.0.0.1:9093"
    for key in ("default.replication.factor", "offsets.topic.replication.factor"):
        assert single[key] == "1"
    assert single["min.insync.replicas"] == single["transaction.state.log.min.isr"] == "1"


def test_three_nodes_share_a_quorum_and_keep_three_replicas_two_in_sync() -> None:
    voters = ["127.0.0.1:9093", "127.0.0.1:9193", "127.0.0.1:9293"]
    second = _node(2, voters)
    assert second["node.id"] == "2"
    assert second["controller.quorum.voters"] == (
        "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293"
    )
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
    ):
        assert second[key] == "3"
    assert second["min.insync.replicas"] == second["transaction.state.log.min.isr"] == "2"
    assert second["unclean.leader.election.enable"] == "false"


def test_kafka_nodes_lists_every_node_in_the_bootstrap_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_NODES", "3")
    assert INSTANCE.kafka_nodes == 3
    assert INSTANCE.local_endpoints.kafka_bootstrap == (
        "127.0.0.1:23092,127.0.0.1:23192,127.0.0.1:23292"
    )
    assert INSTANCE.kafka_node_ports(3) == (23292, 23293)
    monkeypatch.delenv("KAFKA_NODES")
    assert INSTANCE.kafka_nodes == 1  # never formatted: one node
    assert INSTANCE.local_endpoints.kafka_bootstrap == "127.0.0.1:23092"


@pytest.mark.parametrize("nodes", ["2", "0", "three"])
def test_an_unsupported_node_count_is_refused(monkeypatch: pytest.MonkeyPatch, nodes: str) -> None:
    monkeypatch.setenv("KAFKA_NODES", nodes)
    with pytest.raises(DevstackError, match="1 or 3"):
        _ = INSTANCE.kafka_nodes


def test_dead_letter_topics_keep_their_records_far_longer() -> None:
    layout = kafka_admin.TopicLayout(6, 3, 2)
    topic, dead_letters = (
        layout.configs("gifting.gift-sent"),
        layout.configs("gifting.gift-sent.dlq"),
    )
    assert topic["retention.ms"] == str(7 * kafka_admin.DAY_MS)
    assert dead_letters["retention.ms"] == str(365 * kafka_admin.DAY_MS)
    assert topic["min.insync.replicas"] == dead_letters["min.insync.replicas"] == "2"


def test_a_layout_cannot_ask_more_in_sync_replicas_than_replicas() -> None:
    with pytest.raises(ValueError, match=r"min\.insync\.replicas 3"):
        kafka_admin.TopicLayout(6, 2, 3)


def test_the_layout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("TOPIC_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("DEAD_LETTER_RETENTION_MS", "-1")  # keep dead letters for ever
    layout = InfraSettings().topic_layout()
    assert (layout.partitions, layout.replication_factor, layout.min_insync_replicas) == (12, 3, 2)
    assert layout.configs("a.dlq")["retention.ms"] == "-1"
    monkeypatch.setenv("TOPIC_MIN_INSYNC_REPLICAS", "3")
    assert InfraSettings().topic_layout().min_insync_replicas == 3


def test_every_node_reaches_the_clients_as_an_address_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # FastStream takes a string as one address: "a:1,b:2" must arrive as two.
    monkeypatch.setenv("KAFKA_NODES", "3")
    kafka_settings = INSTANCE.local_endpoints.kafka()
    nodes = ["127.0.0.1:23092", "127.0.0.1:23192", "127.0.0.1:23292"]
    assert kafka_settings.servers == nodes
    plaintext = KafkaClientSettings(bootstrap_servers=" a:1, b:2 ,")
    assert plaintext.servers == plaintext.client_options()["bootstrap_servers"] == ["a:1", "b:2"]


async def test_a_stack_formatted_for_one_node_refuses_three(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = Instance("layout-refusal", 23092, 23093, 23432, 23081)
    data = scratch.kafka_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    try:
        (data / "meta.properties").write_text("node.id=1\n")
        (scratch.kafka_dir / "nodes").write_text("1\n")
        monkeypatch.setenv("KAFKA_NODES", "3")
        configs = {node: scratch.kafka_dir / f"{node}.properties" for node in (1, 2, 3)}
        with pytest.raises(DevstackError, match="holds data for 1 node"):
            await kafka._format_storage(scratch, ["java"], configs)
        assert (data / "meta.properties").exists()  # nothing was wiped
    finally:
        shutil.rmtree(scratch.root, ignore_errors=True)
