"""Fixtures shared by every test folder."""

# ─── Infrastructure: real Kafka and PostgreSQL (devstack owns this section) ──────────
#
# One session fixture, `infra`, picks its backend in this order:
#   1. an external stack: COINSTREAM_TEST_KAFKA and COINSTREAM_TEST_DATABASE_URL set;
#   2. testcontainers, when a Docker engine answers (found as tests/containers.py says:
#      DOCKER_HOST, the Docker context, Docker Desktop/Colima/Podman sockets);
#   3. else the local real stack's `test` instance (devstack: Kafka from Maven Central
#      jars, PostgreSQL from the distribution), on ports apart from `make up`'s.
# Topics and every service's migrations are in place before the first test runs.
# The `test` instance keeps running after the session (the next run starts in about a
# second); COINSTREAM_TEST_STOP=1 stops it.

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import devstack
from shared.kafka_admin import kafka_answers
from shared.kafka_client import KafkaClientSettings
from tests.containers import Backend, choose_backend, ping_engine, use_engine
from tests.support import free_port

# The versions devstack and compose.yaml run (see docs/development.md for the pin).
KAFKA_IMAGE = "apache/kafka:4.3.1"
POSTGRES_IMAGE = "postgres:15"


@dataclass(frozen=True)
class Infra(devstack.Endpoints):
    """Endpoints of the stack under test, and which backend provides them
    (`external`, `testcontainers` or `devstack`). Pass it wherever Endpoints go, such as
    `devstack.start_service(devstack.get_instance("test"), "wallet", infra)`."""

    backend: str = "devstack"


def _test_secrets() -> devstack.Secrets:
    """For a stack devstack does not run: the `test` instance's folder still holds the
    HTTP token key pair and the webhook secret the services and tests share (Kafka and
    PostgreSQL there are used with one principal and one role)."""
    secrets = devstack.get_instance("test").secrets
    secrets.ensure_jwt_keys()
    return secrets


def _external_stack() -> Infra | None:
    kafka = os.environ.get("COINSTREAM_TEST_KAFKA")
    database = os.environ.get("COINSTREAM_TEST_DATABASE_URL")
    if kafka and database:
        # Every component connects with the KAFKA_* settings of the environment.
        settings = KafkaClientSettings(bootstrap_servers=kafka)
        return Infra(
            kafka,
            database,
            secrets=_test_secrets(),
            kafka_settings=settings,
            database_roles=False,
            backend="external",
        )
    return None


@functools.cache
def _backend() -> Backend:
    """The backend this session uses and why (tests/containers.py decides), once."""
    return choose_backend(os.environ, Path.home(), ping_engine)


def pytest_report_header(config: pytest.Config) -> str:
    return _backend().line()


def _kafka_container(host: str, host_port: int) -> Any:
    """The pinned Apache Kafka image (as in compose.yaml), single KRaft node.

    Kafka tells clients where to reconnect, so the host port is fixed before start and
    advertised with the address the tests reach the container at (`Backend.host`);
    testcontainers' own KafkaContainer only knows Confluent's images.
    """
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(KAFKA_IMAGE).with_bind_ports(9092, host_port)
    for name, value in {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{host_port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }.items():
        container = container.with_env(name, value)
    return container


@contextlib.asynccontextmanager
async def _containers(host: str) -> AsyncIterator[Infra]:
    from testcontainers.community.postgres import PostgresContainer

    with contextlib.ExitStack() as running:
        # Pulling and starting containers blocks; keep the event loop free meanwhile.
        # The port is probed free here: on a remote engine it is only likely free there.
        port = free_port()
        await asyncio.to_thread(running.enter_context, _kafka_container(host, port))
        bootstrap = f"{host}:{port}"
        deadline = time.monotonic() + 120
        while not await kafka_answers(
            KafkaClientSettings(bootstrap_servers=bootstrap)
        ):  # a metadata answer, not an open port
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka container did not answer on {bootstrap}")
            await asyncio.sleep(1)
        postgres = await asyncio.to_thread(
            running.enter_context,
            PostgresContainer(
                POSTGRES_IMAGE,
                username="coinstream",
                password="coinstream",
                dbname="coinstream",
                driver=None,
            ),
        )
        yield Infra(
            bootstrap,
            postgres.get_connection_url(host=host),
            secrets=_test_secrets(),
            kafka_settings=KafkaClientSettings(bootstrap_servers=bootstrap),
            database_roles=False,
            backend="testcontainers",
        )


@pytest.fixture(scope="session")
async def infra(pytestconfig: pytest.Config) -> AsyncIterator[Infra]:
    """Real Kafka and PostgreSQL for the session, topics and schemas set up."""
    backend = _backend()
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and pytestconfig.get_verbosity() < 0:
        with capture.global_and_fixture_disabled():  # -q hides the header saying it
            reporter.write_line(backend.line())
    external = _external_stack()
    if external is not None:
        await devstack.run_setup(external)
        yield external
    elif backend.engine is not None:
        use_engine(backend.engine, os.environ)
        async with _containers(backend.host) as containers:
            await devstack.run_setup(containers)
            yield containers
    else:
        instance = devstack.get_instance("test")
        endpoints = await devstack.ensure_infra(instance)  # runs the setup too
        yield Infra(
            endpoints.kafka_bootstrap,
            endpoints.database_url,
            secrets=endpoints.secrets,
            backend="devstack",
        )
        if os.environ.get("COINSTREAM_TEST_STOP") == "1":
            await devstack.down(instance)


# ─── End of the infrastructure section ───────────────────────────────────────────────
