"""PostgreSQL least privilege: each service's role touches only its own schema, the
operators' reader only reads, and PUBLIC has nothing (shared/db_roles.py)."""

from urllib.parse import urlsplit

import asyncpg
import pytest

from devstack import Endpoints
from shared import db_roles

# One table of each schema, written by its service.
TABLES = {
    "payment": "payment.purchases",
    "wallet": "wallet.accounts",
    "gifting": "gifting.gift_requests",
    "payout": "payout.payouts",
}

pytestmark = pytest.mark.integration


def _roles_or_skip(database: Endpoints) -> None:
    if database.secrets is None or not database.database_roles:
        pytest.skip("the services' roles are not provisioned by this backend (one role)")


async def _connect(database: Endpoints, role: str) -> asyncpg.Connection:
    return await asyncpg.connect(database.database(role))


@pytest.mark.parametrize("service", db_roles.SERVICES)
async def test_a_service_role_reads_and_writes_its_own_schema_only(
    database: Endpoints, service: str
) -> None:
    _roles_or_skip(database)
    conn = await _connect(database, service)
    try:
        assert await conn.fetchval("SELECT current_user") == service
        await conn.fetchval(f"SELECT count(*) FROM {TABLES[service]}")  # its own: fine
        for other, table in TABLES.items():
            if other == service:
                continue
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval(f"SELECT count(*) FROM {table}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"DELETE FROM {table}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"CREATE TABLE {other}.intruder (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE public.intruder (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE SCHEMA intruder")
    finally:
        await conn.close()


async def test_each_schema_and_its_tables_belong_to_the_service_role(
    database: Endpoints,
) -> None:
    _roles_or_skip(database)
    conn = await asyncpg.connect(database.database_url)
    try:
        foreign = await conn.fetch(
            """
            SELECT n.nspname AS schema, c.relname AS name, pg_get_userbyid(c.relowner) AS owner
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'S', 'v')
              AND pg_get_userbyid(c.relowner) <> n.nspname
            """,
            list(db_roles.SERVICES),
        )
        public_rights = await conn.fetchval(
            """
            SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) AS acl
            WHERE n.nspname = ANY($1::text[]) AND acl.grantee = 0
            """,
            [*db_roles.SERVICES, "public"],
        )
    finally:
        await conn.close()
    assert [dict(row) for row in foreign] == []
    assert public_rights == 0  # PUBLIC may use no schema, not even `public`


async def test_the_reader_reads_every_schema_and_writes_nothing(database: Endpoints) -> None:
    _roles_or_skip(database)
    conn = await _connect(database, db_roles.READER)
    try:
        for table in TABLES.values():
            await conn.fetchval(f"SELECT count(*) FROM {table}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"DELETE FROM {table}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE wallet.accounts SET kind = kind")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE wallet.intruder (id int)")
    finally:
        await conn.close()


async def test_a_wrong_password_is_refused(database: Endpoints) -> None:
    _roles_or_skip(database)
    parts = urlsplit(database.database_url)
    url = f"postgresql://wallet:not-the-password@{parts.hostname}:{parts.port}{parts.path}"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(url)


async def test_provisioning_again_changes_nothing(database: Endpoints) -> None:
    _roles_or_skip(database)
    await db_roles.provision(database.database_url, database.role_passwords())
    conn = await _connect(database, "wallet")
    try:
        await conn.fetchval("SELECT count(*) FROM wallet.accounts")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT count(*) FROM payment.purchases")
    finally:
        await conn.close()
