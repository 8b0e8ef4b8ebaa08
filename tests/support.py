"""Helpers for integration and end-to-end tests: ids, Kafka I/O, polling, services."""

import asyncio
import dataclasses
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from starlette.applications import Starlette

from devstack import Endpoints, get_instance
from devstack.audit import run_audit as run_audit  # the tests import it from here
from shared import acl, auth, db_roles, migrations
from shared.topics import all_topics

T = TypeVar("T")


def unique(prefix: str) -> str:
    """An id no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (likely still free when used)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def create_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def session_database(infra: Endpoints, prefix: str) -> Endpoints:
    """A database of its own for a test session, set up as a deployment is: the
    services' roles provisioned in it (each owning its schema), then every service's
    migrations applied as the role that owns the schema. Returns `infra` pointed at it
    (`database_url`: the administrator; `database(role)`: a service's or the reader's)."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    session = dataclasses.replace(
        infra, database_url=await create_database(infra.database_url, name)
    )
    if session.secrets is not None and session.database_roles:
        await db_roles.provision(session.database_url, session.role_passwords())
    migrations.apply_all(session.database)
    return session


async def drop_session_database(infra: Endpoints, session: Endpoints) -> None:
    await drop_database(infra.database_url, urlsplit(session.database_url).path.lstrip("/"))


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, timeout_s: float = 30.0, every_s: float = 0.1
) -> T:
    """Poll `check` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {check}")
        await asyncio.sleep(every_s)


async def publish(
    infra: Endpoints,
    topic: str,
    messages: list[tuple[str, bytes | dict[str, Any]]],
    *,
    principal: str | None = None,
) -> None:
    """Publish (key, value) pairs in order, as the component that writes `topic` would:
    an upstream app (`app`) for a request, else the service that publishes it."""
    kafka = infra.kafka(principal or acl.owner_of(topic))
    producer = AIOKafkaProducer(**kafka.client_options(), enable_idempotence=True)
    await producer.start()
    try:
        for key, value in messages:
            body = value if isinstance(value, bytes) else json.dumps(value).encode()
            await producer.send_and_wait(topic, body, key=key.encode())
    finally:
        await producer.stop()


async def session_groups(infra: Endpoints, prefix: str) -> None:
    """Make `<prefix>-<service>` the services' consumer groups for this test session:
    allowed to each service's principal (as an operator would for another
    CONSUMER_GROUP_PREFIX) and starting at today's end of every topic."""
    if infra.secured:
        await acl.apply(infra.kafka(acl.OPERATOR), acl.group_acls(prefix))
    await skip_history(infra, [f"{prefix}-{service}" for service in acl.SERVICES])


async def skip_history(infra: Endpoints, group_ids: list[str]) -> None:
    """Commit the current end of every topic for these new consumer groups.

    A new group starts at the earliest offset, so without this every test session's
    services would first replay everything all earlier sessions published (thousands
    of purchases, growing with each run) before reaching the test's own messages.
    """
    kafka = infra.kafka(acl.OPERATOR)  # commits offsets of other principals' groups
    producer = AIOKafkaProducer(**kafka.client_options())  # asks for partitions
    reader = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await producer.start()
    await reader.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in all_topics()
            for p in sorted(await producer.partitions_for(topic))
        ]
        ends = await reader.end_offsets(partitions)
    finally:
        await reader.stop()
        await producer.stop()
    for group_id in group_ids:
        committer = AIOKafkaConsumer(
            **kafka.client_options(), group_id=group_id, enable_auto_commit=False
        )
        await committer.start()
        try:
            committer.assign(partitions)  # not a member: commits as a standalone consumer
            await committer.commit({tp: offset for tp, offset in ends.items()})
        finally:
            await committer.stop()


@dataclass
class TopicReader:
    """Reads topics from the beginning (no group, no commits) and keeps what it saw,
    as the operator (it may read every topic, internal ones included)."""

    infra: Endpoints
    topics: tuple[str, ...]
    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    # (topic, JSON object or None), parsed once per record: the topics' history is long
    # and tests poll often.
    _bodies: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "TopicReader":
        self._consumer = AIOKafkaConsumer(
            *self.topics,
            **self.infra.kafka(acl.OPERATOR).client_options(),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                self.records.extend(records)
                self._bodies.extend((record.topic, _json_object(record)) for record in records)

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None and self._consumer is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    def matching(self, topic: str, **fields: Any) -> list[dict[str, Any]]:
        """JSON bodies on `topic` whose fields equal the given values."""
        return [
            body
            for seen, body in self._bodies
            if seen == topic
            and body is not None
            and all(body.get(k) == v for k, v in fields.items())
        ]

    async def wait_for_all(
        self, topic: str, field: str, values: Iterable[Any], *, timeout_s: float = 60.0
    ) -> dict[Any, dict[str, Any]]:
        """Wait until `topic` has a body for each of `values` in `field`; the first of each."""
        wanted = set(values)

        async def complete() -> dict[Any, dict[str, Any]] | None:
            found: dict[Any, dict[str, Any]] = {}
            for body in self.matching(topic):
                if body.get(field) in wanted:
                    found.setdefault(body[field], body)
            return found if len(found) == len(wanted) else None

        return await eventually(complete, timeout_s=timeout_s)

    async def wait_for(self, topic: str, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        async def enough() -> list[dict[str, Any]] | None:
            found = self.matching(topic, **fields)
            return found if len(found) >= count else None

        return await eventually(enough)


def _json_object(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any] | None:
    try:
        body = json.loads(record.value or b"")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def stack_token(
    subject: str = "e2e-operator", *, operator: bool = True, instance: str = "test"
) -> str:
    """A bearer token for the services a local stack instance runs (e2e tests, demo),
    signed with its dev key (`.stack/<instance>/secrets/jwt-private.pem`); by default
    with the operator scope, which reads any user's data and /metrics."""
    private_key = get_instance(instance).secrets.jwt_private_key
    return auth.mint_token(private_key, subject, operator=operator, ttl=timedelta(hours=6))


def stack_auth(
    subject: str = "e2e-operator", *, operator: bool = True, instance: str = "test"
) -> dict[str, str]:
    """`stack_token` as the headers of an HTTP request."""
    return {"Authorization": f"Bearer {stack_token(subject, operator=operator, instance=instance)}"}


@asynccontextmanager
async def in_process(
    app: Starlette, *, token: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """Run a service app in this process (its real consumers, relay and pool); the
    client sends `token` as its bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://svc", headers=headers) as client,
    ):
        yield client


def purchase_request(
    *,
    user_id: str,
    package_id: str = "coins_70",
    amount: int = 99,
    method: str = "pm_card_ok",
    currency: str = "USD",
) -> dict[str, Any]:
    return {
        "request_id": unique("req"),
        "user_id": user_id,
        "package_id": package_id,
        "price": {"amount_minor": amount, "currency": currency},
        "payment_method": method,
        "occurred_at": "2026-11-22T12:00:00+00:00",
    }


async def delete_topic(infra: Endpoints, topic: str) -> None:
    """Delete a topic a test created for itself."""
    admin = AIOKafkaAdminClient(**infra.kafka().client_options())
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
