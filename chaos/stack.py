"""The stack under fire: a database and consumer groups of the run's own, service
replicas started and stopped, and the faults themselves.

Only devstack's public helpers are used (start_service / stop_service, kafka and
postgres); nothing here imports the services' code.
"""

import asyncio
import dataclasses
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devstack import kafka, postgres
from devstack.errors import DevstackError
from devstack.instances import Endpoints, Instance
from devstack.procs import wait_ready
from devstack.services import start_service, stop_service
from shared import acl, db_roles, migrations
from shared.topics import all_topics

CHAOS = Instance("chaos", 29092, 29093, 25434, 28081)
"""`python -m chaos`'s own instance: ports apart from `default` (9092, 25432, 8081…)
and `test` (19092, 25433, 18081…), its own folder `.stack/chaos/`."""
READY_TIMEOUT_S = 180.0
"""How long a started replica may take to be ready. A replica restarted while a broker
is down (or the group's coordinator moves) joins its group only once the broker is
back: on the loaded 2-core machine that took 72 s once, which is slow, not wrong (the
checker measures recovery, and devstack's default of 60 s aborted a run over it)."""

CHAOS_TEST = Instance("chaos-test", 26092, 26093, 25436, 27081)
"""The short run of the test suite (`tests/e2e/test_chaos.py`). Not the `test`
instance: after a SIGKILL its broker recovers the logs of every topic all test
sessions made (hundreds of partitions, minutes on a busy machine); a broker of its
own holds only the system's topics, and the other tests' Kafka is never killed.
Every port is below Linux's ephemeral range (32768-60999): a server restarted while
clients keep reconnecting must not find its port taken as some connection's local
port (a broker on 39092 or 49092 failed to bind exactly so)."""

SERVICE_ENV = {"RELAY_POLL_INTERVAL_S": "0.2"}
RECOVERY_S = 480.0


class Brokers(Protocol):
    """The Kafka brokers a fault may kill: one for the local stack today, any of three
    for a multi-node cluster later (issue #11 item 6 plugs in another implementation)."""

    def names(self) -> list[str]: ...

    async def kill(self, name: str) -> None: ...

    async def restart(self, name: str) -> None: ...


@dataclass
class LocalBroker:
    """The KRaft nodes of a devstack instance: one, or three with KAFKA_NODES=3 (a fault
    then kills one of them while the other two keep every partition's in-sync replicas)."""

    instance: Instance

    def names(self) -> list[str]:
        return [kafka.node_name(node) for node in kafka.nodes(self.instance)]

    def _node(self, name: str) -> int:
        return self.names().index(name) + 1

    async def kill(self, name: str) -> None:
        await kafka.kill_node(self.instance, self._node(name))

    async def restart(self, name: str) -> None:
        """Start it again. After a SIGKILL the broker recovers every partition's log
        first; on a busy 2-core machine that can outlast devstack's 120 s start timeout,
        so a broker still alive and recovering is given up to `RECOVERY_S` more."""
        node = self._node(name)
        try:
            await kafka.ensure_running(self.instance)
        except DevstackError:
            if kafka.pid(self.instance, node) is None:
                raise
            settings = self.instance.local_endpoints.kafka()
            expected = len(kafka.nodes(self.instance))
            await wait_ready(
                f"{name} (recovering its logs)",
                lambda: kafka.cluster_answers(settings, nodes=expected, timeout_s=2.0),
                log=self.instance.log(name),
                timeout_s=RECOVERY_S,
                alive=lambda: kafka.pid(self.instance, node) is not None,
            )


@dataclass
class ChaosStack:
    """The services of one run: `replicas[service]` are the replica numbers running.

    `first_replica`: replica numbers start there, so that a run inside the test
    instance never shares a pid file or a port with the e2e suite's own services.
    """

    instance: Instance
    endpoints: Endpoints
    group_prefix: str
    brokers: Brokers
    first_replica: int = 0
    replicas: dict[str, set[int]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**SERVICE_ENV, "CONSUMER_GROUP_PREFIX": self.group_prefix}

    def running(self) -> list[tuple[str, int]]:
        return sorted((s, r) for s, rs in self.replicas.items() for r in rs)

    def url(self, service: str) -> str:
        """The HTTP address of a running replica of `service` (the lowest)."""
        replica = min(self.replicas[service])
        return f"http://127.0.0.1:{self.instance.service_port(service, replica)}"

    async def start(self, service: str, replica: int | None = None) -> int:
        """Start a replica (the next free number unless given); returns its number."""
        taken = self.replicas.setdefault(service, set())
        if replica is None:
            replica = next(n for n in range(self.first_replica, 1000) if n not in taken)
        await start_service(
            self.instance,
            service,
            self.endpoints,
            replica=replica,
            env=self.env,
            timeout_s=READY_TIMEOUT_S,
        )
        taken.add(replica)
        return replica

    async def start_many(self, counts: dict[str, int]) -> None:
        """Start `counts[service]` replicas of each service side by side."""
        wanted = [
            (service, self.first_replica + n)
            for service, count in counts.items()
            for n in range(count)
        ]
        await asyncio.gather(*(self.start(service, replica) for service, replica in wanted))

    async def stop(self, service: str, replica: int, *, kill: bool = False) -> None:
        await stop_service(self.instance, service, replica=replica, kill=kill)
        self.replicas.get(service, set()).discard(replica)

    async def stop_all(self) -> None:
        for service, replica in self.running():
            await self.stop(service, replica)


async def prepare(instance: Instance, infra: Endpoints, *, first_replica: int = 0) -> ChaosStack:
    """A database of the run's own (roles provisioned, every migration applied) and
    consumer groups of its own that start at today's end of every topic."""
    run = uuid.uuid4().hex[:8]
    name = f"chaos_{run}"
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(infra.database_url)
    database_url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    endpoints = dataclasses.replace(infra, database_url=database_url)
    if endpoints.secrets is not None and endpoints.database_roles:
        await db_roles.provision(endpoints.database_url, endpoints.role_passwords())
    await asyncio.to_thread(migrations.apply_all, endpoints.database)
    prefix = f"chaos-{run}"
    if endpoints.secured:
        await acl.apply(endpoints.kafka(acl.OPERATOR), acl.group_acls(prefix))
    await _start_at_the_end(endpoints, [f"{prefix}-{service}" for service in acl.SERVICES])
    return ChaosStack(instance, endpoints, prefix, LocalBroker(instance), first_replica)


async def drop_database(infra: Endpoints, stack: ChaosStack) -> None:
    name = urlsplit(stack.endpoints.database_url).path.lstrip("/")
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def end_offsets(endpoints: Endpoints, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """Today's end of every partition of `topics`."""
    options = endpoints.kafka(acl.OPERATOR).client_options()
    producer = AIOKafkaProducer(**options)  # asks for partitions
    reader = AIOKafkaConsumer(**options, enable_auto_commit=False)
    await producer.start()
    await reader.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await producer.partitions_for(topic))
        ]
        return dict(await reader.end_offsets(partitions))
    finally:
        await reader.stop()
        await producer.stop()


async def _start_at_the_end(endpoints: Endpoints, group_ids: list[str]) -> None:
    """Commit the end of every topic for new groups: no replay of earlier runs."""
    ends = await end_offsets(endpoints, all_topics())
    for group_id in group_ids:
        committer = AIOKafkaConsumer(
            **endpoints.kafka(acl.OPERATOR).client_options(),
            group_id=group_id,
            enable_auto_commit=False,
        )
        await committer.start()
        try:
            committer.assign(list(ends))
            await committer.commit(ends)
        finally:
            await committer.stop()


async def restart_postgres(instance: Instance, down_s: float) -> None:
    """`pg_ctl stop -m immediate`, `down_s` down, start again (devstack's helper)."""
    await postgres.crash_and_restart(instance, down_s=down_s)
