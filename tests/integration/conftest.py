"""Fixtures for tests of one service against real Kafka and PostgreSQL."""

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest

from devstack import Endpoints
from shared import acl, auth, db_roles
from shared.settings import ServiceSettings
from tests.support import drop_session_database, session_database, session_groups

S = TypeVar("S", bound=ServiceSettings)


@pytest.fixture(scope="session")
async def database(infra: Any) -> AsyncIterator[Endpoints]:
    """A database of its own for this test session: the services' roles provisioned,
    every schema migrated by its owner (`database.database(role)` logs in as a role)."""
    session = await session_database(infra, "coinstream_it")
    yield session
    await drop_session_database(infra, session)


@pytest.fixture(scope="session")
def database_url(database: Endpoints) -> str:
    """The session database as its administrator (for a test's own checks)."""
    return database.database_url


@pytest.fixture(scope="session")
def reader_url(database: Endpoints) -> str:
    """The session database as the operators' read-only role (audit, reconcile)."""
    return database.database(db_roles.READER)


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
def jwt_keys(tmp_path_factory: pytest.TempPathFactory) -> auth.KeyPair:
    """The session's token signing key pair: services verify with the public key."""
    folder = tmp_path_factory.mktemp("jwt")
    return auth.generate_key_pair(folder / "jwt-private.pem", folder / "jwt-public.pem")


@pytest.fixture(scope="session")
def operator_token(jwt_keys: auth.KeyPair) -> str:
    """A bearer token with the operator scope: reads any user's data and /metrics."""
    return auth.mint_token(jwt_keys.private, "it-operator", operator=True, ttl=timedelta(hours=6))


@pytest.fixture(scope="session")
def service_settings(
    infra: Any, database: Endpoints, group_prefix: str, jwt_keys: auth.KeyPair
) -> Callable[..., Any]:
    """Build a service's settings pointing at the test infrastructure."""

    def build(cls: type[S], **overrides: Any) -> S:
        values: dict[str, Any] = {
            # Each service as its own principal; a test's own settings class as the operator.
            "kafka": infra.kafka(cls.service_name or acl.OPERATOR),
            # Each service as its own database role; a test's own class as the administrator.
            "database_url": database.database(cls.service_name or None),
            "consumer_group_prefix": group_prefix,
            "relay_poll_interval_s": 0.2,
            "auth": auth.AuthSettings(public_key_file=jwt_keys.public),
            **overrides,
        }
        return cls(**values)

    return build
