"""The four services as separate processes against the session's real infrastructure."""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import devstack
from devstack.instances import Instance
from shared import migrations
from tests.support import drop_session_database, session_database, session_groups


@dataclass
class Stack:
    """The running services of an end-to-end session, and how to restart one."""

    instance: Instance
    endpoints: devstack.Endpoints
    env: dict[str, str]
    urls: dict[str, str] = field(default_factory=dict)

    async def start(self, service: str, **extra_env: str) -> devstack.ServiceProcess:
        process = await devstack.start_service(
            self.instance, service, self.endpoints, env={**self.env, **extra_env}
        )
        self.urls[service] = process.url
        return process

    async def stop(self, service: str) -> None:
        """A graceful stop: the consumer leaves its group, so a restart rejoins at once."""
        await devstack.stop_service(self.instance, service)


@pytest.fixture(scope="package")
async def stack(infra: Any) -> AsyncIterator[Stack]:
    """payment, wallet, gifting and payout as four processes, on a database of their own.

    Package-scoped: they stop before other test folders run, so no second wallet
    answers the integration tests' messages.
    """
    session = await session_database(infra, "coinstream_e2e")
    instance = devstack.get_instance("test")
    for service in migrations.SERVICES:  # leftovers of an interrupted run, on another database
        await devstack.stop_service(instance, service)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    # New groups would replay every earlier session's messages first; start at the end.
    await session_groups(infra, prefix)
    running = Stack(
        instance,
        session,
        env={
            "CONSUMER_GROUP_PREFIX": prefix,
            "RELAY_POLL_INTERVAL_S": "0.2",
        },
    )
    try:
        for service in migrations.SERVICES:
            await running.start(service)
        yield running
    finally:
        for service in migrations.SERVICES:
            await devstack.stop_service(instance, service)
        await drop_session_database(infra, session)
