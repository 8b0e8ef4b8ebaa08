"""Fixtures for tests of one service against real Kafka and PostgreSQL."""

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest

from shared import acl, migrations
from shared.settings import ServiceSettings
from tests.support import create_database, drop_database, session_groups

S = TypeVar("S", bound=ServiceSettings)


@pytest.fixture(scope="session")
async def database_url(infra: Any) -> AsyncIterator[str]:
    """A database of its own for this test session, with every service's schema migrated."""
    name = f"coinstream_it_{uuid.uuid4().hex[:8]}"
    url = await create_database(infra.database_url, name)
    migrations.apply_all(url)
    yield url
    await drop_database(infra.database_url, name)


@pytest.fixture(scope="session")
async def group_prefix(infra: Any) -> str:
    """The consumer-group prefix of this session, its groups starting at today's end.

    Groups are new for each session, so earlier runs' offsets never hide messages, and
    a running `make up` stack never shares work with the tests; they skip the history
    earlier sessions left in the topics instead of replaying all of it.
    """
    prefix = f"it-{uuid.uuid4().hex[:8]}"
    await session_groups(infra, prefix)
    return prefix


@pytest.fixture(scope="session")
def service_settings(infra: Any, database_url: str, group_prefix: str) -> Callable[..., Any]:
    """Build a service's settings pointing at the test infrastructure."""

    def build(cls: type[S], **overrides: Any) -> S:
        values: dict[str, Any] = {
            # Each service as its own principal; a test's own settings class as the operator.
            "kafka": infra.kafka(cls.service_name or acl.OPERATOR),
            "database_url": database_url,
            "consumer_group_prefix": group_prefix,
            "relay_poll_interval_s": 0.2,
            **overrides,
        }
        return cls(**values)

    return build
