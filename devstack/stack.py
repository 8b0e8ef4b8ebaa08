"""Whole-stack operations: infra (Kafka + PostgreSQL + setup), up, down, status."""

import asyncio
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from devstack import kafka, postgres
from devstack.errors import DevstackError
from devstack.instances import REPO_ROOT, Endpoints, Instance
from devstack.procs import locked, run, say
from devstack.services import (
    http_ready,
    infra_env,
    running_services,
    start_service,
    stop_all_services,
)
from shared import db_roles
from shared.kafka_admin import kafka_answers
from shared.kafka_client import KafkaClientSettings
from shared.migrations import SERVICES


async def run_setup(endpoints: Endpoints, *, kafka_nodes: int | None = None) -> None:
    """`coinstream setup` against `endpoints`: create every topic, apply every migration.

    Run as a separate process, exactly as an operator runs it (it is idempotent).
    `kafka_nodes`: the size of the stack's own Kafka, which sets the topics' replicas
    (None: a Kafka the stack does not run; TOPIC_REPLICATION_FACTOR as the environment says).
    """
    started = time.monotonic()
    env = infra_env(endpoints)
    if kafka_nodes is not None:
        env["TOPIC_REPLICATION_FACTOR"] = str(kafka.replication(kafka_nodes)[0])
    await run(
        [sys.executable, "-m", "shared.cli", "setup"],
        what="coinstream setup (topics and migrations)",
        env=env,
        cwd=REPO_ROOT,
    )
    say(f"setup (topics + migrations) done in {time.monotonic() - started:.1f}s")


async def ensure_infra(
    instance: Instance,
    *,
    kafka_bootstrap: str | None = None,
    database_url: str | None = None,
    setup: bool = True,
) -> Endpoints:
    """Kafka and PostgreSQL of `instance` running and answering, topics and schemas in place.

    Whatever already runs is left alone, so calling it again is cheap and harmless.
    `kafka_bootstrap` / `database_url` name an existing server to use instead of starting
    the instance's own (it is then never stopped by `down`).
    """
    async with locked(instance.root / "lock"):
        return await _ensure_infra(instance, kafka_bootstrap, database_url, setup)


async def _ensure_infra(
    instance: Instance, kafka_bootstrap: str | None, database_url: str | None, setup: bool
) -> Endpoints:
    started = time.monotonic()
    _preflight(start_kafka=kafka_bootstrap is None, start_postgres=database_url is None)
    local = instance.local_endpoints
    external = (
        None if kafka_bootstrap is None else KafkaClientSettings(bootstrap_servers=kafka_bootstrap)
    )
    endpoints = Endpoints(
        kafka_bootstrap or local.kafka_bootstrap,
        database_url or local.database_url,
        secrets=local.secrets,
        kafka_settings=external,
        database_roles=database_url is None,
    )
    # Side by side: the broker's JVM start and initdb/pg_ctl do not wait for each other.
    await _all(
        kafka.ensure_running(instance) if external is None else kafka.wait_external(external),
        postgres.ensure_running(instance)
        if database_url is None
        else postgres.wait_external(database_url),
    )
    instance.secrets.ensure_jwt_keys()  # `coinstream token` signs, the services verify
    if database_url is None:
        await db_roles.provision(endpoints.database_url, endpoints.role_passwords())
    if setup:
        await run_setup(endpoints, kafka_nodes=instance.kafka_nodes if external is None else None)
    say(f"infra of {instance.name!r} ready in {time.monotonic() - started:.1f}s")
    return endpoints


def _preflight(*, start_kafka: bool, start_postgres: bool) -> None:
    """Name everything missing at once, before anything starts: a fresh machine should
    learn all it has to install from one run."""
    problems = [
        *(kafka.missing_tools() if start_kafka else []),
        *(postgres.missing_tools() if start_postgres else []),
    ]
    if problems:
        raise DevstackError("cannot start the local stack:\n- " + "\n- ".join(problems))


async def up(
    instance: Instance, *, kafka_bootstrap: str | None = None, database_url: str | None = None
) -> Endpoints:
    """The infra, then the four services; returns when every service answers /health/ready."""
    async with locked(instance.root / "lock"):
        started = time.monotonic()
        endpoints = await _ensure_infra(instance, kafka_bootstrap, database_url, setup=True)
        await _all(*(start_service(instance, service, endpoints) for service in SERVICES))
        say(f"stack {instance.name!r} up in {time.monotonic() - started:.1f}s")
        return endpoints


async def down(instance: Instance) -> None:
    """Stop what this instance started, nothing else: services, then Kafka, then PostgreSQL."""
    async with locked(instance.root / "lock"):
        stopped = await stop_all_services(instance)
        if await kafka.stop_broker(instance):
            stopped.append("kafka")
        if await postgres.stop_server(instance):
            stopped.append("postgres")
    say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@dataclass(frozen=True)
class ComponentStatus:
    """One line of `status`: a process of the instance, its pid and whether it answers."""

    name: str
    address: str
    pid: int | None
    answers: bool


async def status(instance: Instance) -> list[ComponentStatus]:
    """What runs in the instance and whether each part answers a real request."""
    local = instance.local_endpoints
    pids = running_services(instance)
    urls = {service: f"http://127.0.0.1:{instance.service_port(service)}" for service in SERVICES}
    nodes = {
        node: f"127.0.0.1:{instance.kafka_node_ports(node)[0]}" for node in kafka.nodes(instance)
    }
    operator = local.kafka()
    answers = await asyncio.gather(
        *(
            kafka_answers(operator.model_copy(update={"bootstrap_servers": address}), timeout_s=2.0)
            for address in nodes.values()
        ),
        postgres.answers(local.database_url),
        *(http_ready(url) for url in urls.values()),
    )
    rows = [
        ComponentStatus(kafka.node_name(node), address, kafka.pid(instance, node), ok)
        for (node, address), ok in zip(nodes.items(), answers, strict=False)
    ]
    rest = answers[len(nodes) :]
    rows.append(
        ComponentStatus(
            "postgres",
            f"127.0.0.1:{instance.postgres_port}",
            postgres.server_pid(instance),
            rest[0],
        )
    )
    rows += [
        ComponentStatus(service, url, pids.get(service), ok)
        for (service, url), ok in zip(urls.items(), rest[1:], strict=True)
    ]
    return rows


async def _all(*steps: Coroutine[Any, Any, object]) -> None:
    """Run steps concurrently; if one fails the others are cancelled, and the developer
    sees every failure's message rather than an exception group."""
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(step)
    except ExceptionGroup as failed:
        if all(isinstance(error, DevstackError) for error in failed.exceptions):
            raise DevstackError("\n\n".join(map(str, failed.exceptions))) from None
        raise
