"""Apache Kafka for the local stack: one KRaft node (broker and controller), or three
(`KAFKA_NODES=3`: replication factor 3, `min.insync.replicas` 2), run from the jars Maven
Central publishes, so no Docker image and no tarball are needed."""

import asyncio
import functools
import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from devstack.errors import DevstackError
from devstack.instances import KAFKA_NODE_COUNTS, Instance
from devstack.procs import live_pid, locked, run, say, spawn, stop, wait_ready
from devstack.secrets import KAFKA_USERS, SCRAM_MECHANISM, Secrets
from shared import acl
from shared.kafka_admin import brokers_registered, kafka_answers
from shared.kafka_client import KafkaClientSettings

HERE = Path(__file__).resolve().parent / "kafka"
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
MOST_NODES = max(map(int, KAFKA_NODE_COUNTS))
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


@functools.cache
def kafka_version() -> str:
    """The Kafka version pinned in `devstack/kafka/pom.xml` (the single source of truth)."""
    version = ET.parse(POM).findtext("m:properties/m:kafka.version", namespaces=_POM_NS)
    if not version:
        raise DevstackError(f"{POM} has no <kafka.version> property")
    return version


def cache_dir() -> Path:
    """Where the jars of this Kafka version live: outside the repository, shared by all
    instances and clones, downloaded once."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "coinstream" / f"kafka-{kafka_version()}"


async def ensure_jars() -> Path:
    """The folder of Kafka's runtime classpath, resolved with Maven the first time."""
    home = cache_dir()
    libs, marker = home / "libs", home / "complete"
    if marker.exists():
        return libs
    async with locked(home.parent / f"{home.name}.lock"):
        if marker.exists():  # another process downloaded them while we waited
            return libs
        mvn = _require("mvn")
        shutil.rmtree(libs, ignore_errors=True)  # leftovers of an interrupted download
        say(f"kafka: downloading Kafka {kafka_version()} jars from Maven Central (once)")
        started = time.monotonic()
        await run(
            [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={libs}"],
            what="resolving Kafka with Maven",
        )  # fmt: skip
        marker.write_text(kafka_version() + "\n")  # written last: its presence means complete
        say(f"kafka: jars ready in {time.monotonic() - started:.1f}s ({libs})")
    return libs


def missing_tools() -> list[str]:
    """What has to be installed before this machine can run Kafka (empty: nothing)."""
    needed = ["java"] if (cache_dir() / "complete").exists() else ["java", "mvn"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if not missing:
        return []
    return [
        f"{' and '.join(missing)} not found on PATH. Kafka needs a JDK 17+ and, the first "
        "time, Maven: `sh scripts/prereqs stack` installs them or names the packages (or set "
        "KAFKA_BOOTSTRAP_SERVERS to an existing broker)"
    ]


def _require(command: str) -> str:
    found = shutil.which(command)
    if found is None:
        raise DevstackError("\n".join(missing_tools()))
    return found


def _java(libs: Path) -> list[str]:
    return [
        _require("java"),
        "-Xmx512m",
        "-cp",
        f"{libs}/*",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
    ]


def broker_properties(
    *,
    broker_password: str,
    listeners: dict[str, tuple[str, str]],
    controller: str,
    keystore: str,
    truststore: str,
    log_dir: str,
    node_id: int = 1,
    voters: list[str] | None = None,
) -> dict[str, str]:
    """server.properties of a secure node that is both broker and controller.

    `controller`: this node's controller address; `voters`: every node's, in node order
    (None: this node alone is the quorum). With three nodes or more, topics and Kafka's
    internal topics get three replicas and need two in sync to accept a write.

    `listeners`: client listener name → (bind address, advertised address); the first is
    also the inter-broker one. Clients authenticate with SASL SCRAM-SHA-512 over TLS (the
    stack's CA and broker certificate, PEM files), the controller listener with SASL PLAIN
    over TLS for the broker's own user (the controller cannot read SCRAM users before it
    has the metadata), and KRaft's StandardAuthorizer allows only what `shared.acl`
    grants; `broker` and `operator` are super users.
    """
    names = list(listeners)
    quorum = voters or [controller]
    replicas, in_sync = replication(len(quorum))
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(
            f"{node}@{address}" for node, address in enumerate(quorum, start=1)
        ),
        "listeners": ",".join(
            [
                *(f"{name}://{bind}" for name, (bind, _) in listeners.items()),
                f"CONTROLLER://{controller}",
            ]
        ),
        "advertised.listeners": ",".join(
            f"{name}://{advertised}" for name, (_, advertised) in listeners.items()
        ),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(
            f"{name}:SASL_SSL" for name in [*names, "CONTROLLER"]
        ),
        "inter.broker.listener.name": names[0],
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        **{
            f"listener.name.{name.lower()}.scram-sha-512.sasl.jaas.config": _jaas(
                "scram.ScramLoginModule", broker_password
            )
            for name in names
        },
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": _jaas(
            "plain.PlainLoginModule",
            broker_password,
            f'user_{acl.BROKER}="{broker_password}"',
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": keystore,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": truststore,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{acl.BROKER};User:{acl.OPERATOR}",
        "allow.everyone.if.no.acl.found": "false",
        "log.dirs": log_dir,
        "num.partitions": "6",
        # Internal topics cannot have more replicas than there are nodes.
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(in_sync),
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(in_sync),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(in_sync),
        "unclean.leader.election.enable": "false",
        # A consumer group should not wait 3 s for more members in tests and demos.
        "group.initial.rebalance.delay.ms": "0",
        # Topics come from `coinstream setup` only, as in production: a typo fails loudly.
        "auto.create.topics.enable": "false",
    }
    return settings


def replication(nodes: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) on a cluster of `nodes` nodes: three
    replicas of which two must hold a write, or one of one on a single node."""
    return (3, 2) if nodes >= 3 else (1, 1)


def scram_format_args(secrets: Secrets) -> list[str]:
    """`kafka-storage format` arguments that create every SASL user of the stack."""
    return [
        arg
        for user in KAFKA_USERS
        for arg in (
            "--add-scram",
            f"{SCRAM_MECHANISM}=[name={user},password={secrets.kafka_password(user)}]",
        )
    ]


def write_properties(path: Path, settings: dict[str, str]) -> None:
    """Write a .properties file readable by its owner only (it holds a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(f"{key}={value}\n" for key, value in settings.items()))


def node_dir(instance: Instance, node: int) -> Path:
    """Node 1 keeps the folder a single-node stack always had; node n, `node-<n>/`."""
    return instance.kafka_dir if node == 1 else instance.kafka_dir / f"node-{node}"


def node_name(node: int) -> str:
    """The node's name in logs and pid files: `kafka` for node 1, `kafka-<n>` for others."""
    return "kafka" if node == 1 else f"kafka-{node}"


def _write_config(instance: Instance, node: int) -> Path:
    """Node `node`'s server.properties, rewritten at every start so that it always
    matches the instance's ports (see `broker_properties`)."""
    secrets = instance.secrets
    client, controller = instance.kafka_node_ports(node)
    listen = f"127.0.0.1:{client}"
    nodes = range(1, instance.kafka_nodes + 1)
    settings = broker_properties(
        broker_password=secrets.kafka_password(acl.BROKER),
        listeners={"SASL_SSL": (listen, listen)},
        controller=f"127.0.0.1:{controller}",
        keystore=str(secrets.broker_pem),
        truststore=str(secrets.ca_file),
        log_dir=str(node_dir(instance, node) / "data"),
        node_id=node,
        voters=[f"127.0.0.1:{instance.kafka_node_ports(n)[1]}" for n in nodes],
    )
    path = node_dir(instance, node) / "server.properties"
    write_properties(path, settings)
    return path


def _jaas(module: str, password: str, *extra: str) -> str:
    options = " ".join((f'username="{acl.BROKER}"', f'password="{password}"', *extra))
    return f"org.apache.kafka.common.security.{module} required {options};"


async def _format_storage(instance: Instance, java: list[str], configs: dict[int, Path]) -> None:
    """Give every node the cluster's id and its SCRAM users, once; a formatted log folder
    holds meta.properties. A folder formatted before the stack was secured (no SCRAM
    users) is formatted again: its data is a developer's scratch data. A stack formatted
    for another number of nodes is refused: its topics' replicas would not fit."""
    formatted = instance.kafka_nodes_formatted
    data = [node_dir(instance, node) / "data" for node in configs]
    secured = instance.kafka_dir / "secured"
    if all((folder / "meta.properties").exists() for folder in data):
        if formatted not in (None, len(configs)):
            raise DevstackError(_other_layout(instance, formatted))
        if secured.exists():
            return
        say("kafka: the local data predates SASL/TLS; formatting it again (its data is lost)")
    elif formatted is not None and formatted != len(configs):
        raise DevstackError(_other_layout(instance, formatted))
    for folder in data:  # a half-formatted cluster (interrupted): start it afresh
        shutil.rmtree(folder, ignore_errors=True)
    output = await run([*java, "kafka.tools.StorageTool", "random-uuid"], what="kafka random-uuid")
    cluster_id = output.split()[-1]
    users = scram_format_args(instance.secrets)
    for config in configs.values():
        await run(
            [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config),
             *users],
            what="formatting Kafka storage",
        )  # fmt: skip
    secured.write_text(f"{SCRAM_MECHANISM} users: {', '.join(KAFKA_USERS)}\n")
    (instance.kafka_dir / "nodes").write_text(f"{len(configs)}\n")


def _other_layout(instance: Instance, formatted: int) -> str:
    return (
        f"the {instance.name!r} stack's Kafka holds data for {formatted} node(s), not "
        f"KAFKA_NODES={instance.kafka_nodes}. Keep KAFKA_NODES={formatted}, or start afresh "
        f"(its topics and both databases' data are lost): `python -m devstack down "
        f"--instance {instance.name}` then `rm -rf {instance.root}`"
    )


def _pid_file(instance: Instance, node: int) -> Path:
    return instance.run / f"{node_name(node)}.pid"


def pid(instance: Instance, node: int = 1) -> int | None:
    """The pid of the instance's broker (node `node` of a cluster), if it runs."""
    return live_pid(_pid_file(instance, node))


def nodes(instance: Instance) -> list[int]:
    """The node ids of the instance's Kafka (1-based)."""
    return list(range(1, instance.kafka_nodes + 1))


async def ensure_running(instance: Instance) -> None:
    """Start each of the instance's Kafka nodes that does not run, then wait until the
    cluster answers with every node registered."""
    kafka = instance.local_endpoints.kafka()
    if (
        any(pid(instance, n) for n in nodes(instance))
        and not (instance.kafka_dir / "secured").exists()
    ):
        # A broker started before the stack was secured (plaintext): replace it.
        say("kafka: the running broker predates SASL/TLS; restarting it secured")
        await stop_broker(instance)
    stopped = [node for node in nodes(instance) if pid(instance, node) is None]
    started = time.monotonic()
    if stopped:
        java = _java(await ensure_jars())
        instance.secrets.ensure_kafka()
        configs = {node: _write_config(instance, node) for node in nodes(instance)}
        await _format_storage(instance, java, configs)
        for node in stopped:
            spawn(
                [*java, "kafka.Kafka", str(configs[node])],
                env=os.environ,
                log=instance.log(node_name(node)),
                pid_file=_pid_file(instance, node),
                cwd=node_dir(instance, node),
            )
    expected = len(nodes(instance))
    await wait_ready(
        "kafka",
        lambda: cluster_answers(kafka, nodes=expected, timeout_s=2.0),
        log=instance.log(node_name(stopped[0] if stopped else 1)),
        timeout_s=120.0,
        alive=lambda: all(pid(instance, node) is not None for node in stopped),
    )
    took = time.monotonic() - started
    layout = "" if expected == 1 else f", {expected} nodes"
    state = f"ready in {took:.1f}s" if stopped else "already running"
    say(f"kafka {state} ({kafka.describe()}{layout})")


async def cluster_answers(kafka: KafkaClientSettings, *, nodes: int, timeout_s: float) -> bool:
    """True when the cluster answers and `nodes` brokers are registered (one node: as
    `kafka_answers`)."""
    if nodes == 1:
        return await kafka_answers(kafka, timeout_s=timeout_s)
    return await brokers_registered(kafka, timeout_s=timeout_s) >= nodes


async def kill_node(instance: Instance, node: int) -> bool:
    """SIGKILL one Kafka node (a crash); False if it was not running. `ensure_running`
    starts it again."""
    return await stop(_pid_file(instance, node), grace_s=0.0, kill=True)


async def wait_external(kafka: KafkaClientSettings) -> None:
    """Wait for a broker this stack does not run (KAFKA_BOOTSTRAP_SERVERS and the other
    KAFKA_* settings of the environment)."""
    took = await wait_ready(
        f"kafka at {kafka.describe()}",
        lambda: kafka_answers(kafka, timeout_s=2.0),
        log=None,
        timeout_s=30.0,
    )
    say(f"kafka (external) answers in {took:.1f}s ({kafka.describe()})")


async def stop_broker(instance: Instance) -> bool:
    """Stop every node of the instance's Kafka (a controlled shutdown on SIGTERM), all at
    once; False if none ran."""
    stopped = await asyncio.gather(
        *(stop(_pid_file(instance, node), grace_s=30.0) for node in range(1, MOST_NODES + 1))
    )
    return any(stopped)
