"""Apache Kafka for the local stack: one KRaft node (broker and controller) run from the
jars Maven Central publishes, so no Docker image and no tarball are needed."""

import functools
import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from devstack.errors import DevstackError
from devstack.instances import Instance
from devstack.procs import live_pid, locked, run, say, spawn, stop, wait_ready
from devstack.secrets import KAFKA_USERS, SCRAM_MECHANISM, Secrets
from shared import acl
from shared.kafka_admin import kafka_answers
from shared.kafka_client import KafkaClientSettings

HERE = Path(__file__).resolve().parent / "kafka"
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
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
        "time, Maven: `apt-get install default-jdk-headless maven` (or set "
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
) -> dict[str, str]:
    """server.properties of a single secure node that is its own controller quorum.

    `listeners`: client listener name → (bind address, advertised address); the first is
    also the inter-broker one. Clients authenticate with SASL SCRAM-SHA-512 over TLS (the
    stack's CA and broker certificate, PEM files), the controller listener with SASL PLAIN
    over TLS for the broker's own user (the controller cannot read SCRAM users before it
    has the metadata), and KRaft's StandardAuthorizer allows only what `shared.acl`
    grants; `broker` and `operator` are super users.
    """
    names = list(listeners)
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{controller}",
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
        # One node: internal topics cannot have more than one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # A consumer group should not wait 3 s for more members in tests and demos.
        "group.initial.rebalance.delay.ms": "0",
        # Topics come from `coinstream setup` only, as in production: a typo fails loudly.
        "auto.create.topics.enable": "false",
    }
    return settings


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


def _write_config(instance: Instance) -> Path:
    """The instance's server.properties, rewritten at every start so that it always
    matches the instance's ports (see `broker_properties`)."""
    secrets = instance.secrets
    listen = f"127.0.0.1:{instance.kafka_port}"
    settings = broker_properties(
        broker_password=secrets.kafka_password(acl.BROKER),
        listeners={"SASL_SSL": (listen, listen)},
        controller=f"127.0.0.1:{instance.kafka_controller_port}",
        keystore=str(secrets.broker_pem),
        truststore=str(secrets.ca_file),
        log_dir=str(instance.kafka_dir / "data"),
    )
    path = instance.kafka_dir / "server.properties"
    write_properties(path, settings)
    return path


def _jaas(module: str, password: str, *extra: str) -> str:
    options = " ".join((f'username="{acl.BROKER}"', f'password="{password}"', *extra))
    return f"org.apache.kafka.common.security.{module} required {options};"


async def _format_storage(instance: Instance, java: list[str], config: Path) -> None:
    """Give the node its cluster id and its SCRAM users, once; a formatted log folder
    holds meta.properties. A folder formatted before the stack was secured (no SCRAM
    users) is formatted again: its data is a developer's scratch data."""
    data = instance.kafka_dir / "data"
    secured = instance.kafka_dir / "secured"
    if (data / "meta.properties").exists():
        if secured.exists():
            return
        say("kafka: the local data predates SASL/TLS; formatting it again (its data is lost)")
        shutil.rmtree(data)
    output = await run([*java, "kafka.tools.StorageTool", "random-uuid"], what="kafka random-uuid")
    cluster_id = output.split()[-1]
    users = scram_format_args(instance.secrets)
    await run(
        [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config), *users],
        what="formatting Kafka storage",
    )
    secured.write_text(f"{SCRAM_MECHANISM} users: {', '.join(KAFKA_USERS)}\n")


def _pid_file(instance: Instance) -> Path:
    return instance.run / "kafka.pid"


def pid(instance: Instance) -> int | None:
    """The pid of the instance's broker, if it runs."""
    return live_pid(_pid_file(instance))


async def ensure_running(instance: Instance) -> None:
    """Start the instance's broker unless it runs, then wait until it answers."""
    kafka = instance.local_endpoints.kafka()
    log = instance.log("kafka")
    if pid(instance) is not None and not (instance.kafka_dir / "secured").exists():
        # A broker started before the stack was secured (plaintext): replace it.
        say("kafka: the running broker predates SASL/TLS; restarting it secured")
        await stop_broker(instance)
    already = pid(instance) is not None
    started = time.monotonic()
    if not already:
        java = _java(await ensure_jars())
        instance.secrets.ensure_kafka()
        config = _write_config(instance)
        await _format_storage(instance, java, config)
        spawn(
            [*java, "kafka.Kafka", str(config)],
            env=os.environ,
            log=log,
            pid_file=_pid_file(instance),
            cwd=instance.kafka_dir,
        )
    await wait_ready(
        "kafka",
        lambda: kafka_answers(kafka, timeout_s=2.0),
        log=log,
        timeout_s=120.0,
        alive=lambda: pid(instance) is not None,
    )
    took = time.monotonic() - started
    say(f"kafka {'already running' if already else f'ready in {took:.1f}s'} ({kafka.describe()})")


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
    """Stop the instance's broker (a controlled shutdown on SIGTERM); False if none ran."""
    return await stop(_pid_file(instance), grace_s=30.0)
