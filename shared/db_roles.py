"""PostgreSQL least privilege: one login role per service, owning only its schema, and a
read-only role for the operators' tools (audit, reconcile).

`provision` runs as a superuser (or a role with CREATEROLE that owns the database) in
the database the services use, and is idempotent: it creates what is missing, sets
each role's password, and takes away what nobody should have:

- PUBLIC may not connect to the database nor create temporary tables, may not use the
  `public` schema, and executes no function of a service by default;
- each service role may connect, owns its schema and everything in it (objects a
  superuser created earlier are handed over), and has no right on any other schema;
- the reader may connect, use every service schema and SELECT its tables (today's and,
  through default privileges, those later migrations create), nothing else.

Services then log in as their role (`<SERVICE>_DATABASE_URL`), migrations run as the
owning role, and the audit and reconciliation as the reader.
"""

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

SERVICES: Final = ("payment", "wallet", "gifting", "payout")
READER: Final = "coinstream_reader"
"""The read-only role of the operators' tools."""


@dataclass(frozen=True)
class Role:
    name: str
    password: str


def as_role(database_url: str, role: str, passfile: Path) -> str:
    """`database_url` logging in as `role`, its password read from `passfile` (libpq's
    format; asyncpg and psycopg read `?passfile=`); host, port and database kept."""
    parts = urlsplit(database_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(role, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("passfile", "password")]
    query.append(("passfile", str(passfile)))
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="/"), ""))


async def provision(admin_url: str, passwords: Mapping[str, str]) -> None:
    """Create or update the service roles and the reader in the database of `admin_url`.

    `passwords` maps every role of SERVICES and READER to its password.
    """
    missing = [role for role in (*SERVICES, READER) if role not in passwords]
    if missing:
        raise ValueError(f"no password for role(s) {', '.join(missing)}")
    conn = await asyncpg.connect(admin_url)
    try:
        database = await conn.fetchval("SELECT current_database()")
        for role in (*SERVICES, READER):
            await _login_role(conn, Role(role, passwords[role]))
        async with conn.transaction():
            await _lock_down_database(conn, database)
            for service in SERVICES:
                await _own_schema(conn, service)
                await _readable_by(conn, service, READER)
    finally:
        await conn.close()


async def _login_role(conn: asyncpg.Connection, role: Role) -> None:
    """Create the role, or bring an existing one to these attributes and this password.

    The password travels as a SCRAM-SHA-256 verifier made here, never in clear (a failed
    statement is written to the server's log with its text), and is only set when the
    stored one does not already verify it: provisioning again writes nothing, so
    concurrent runs (two test sessions) do not collide on the role's row.
    """
    attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS"
    stored = await conn.fetchrow(
        "SELECT rolpassword, rolcanlogin, rolsuper, rolinherit FROM pg_authid WHERE rolname = $1",
        role.name,
    )
    if stored is None:
        try:
            await conn.execute(
                f"CREATE ROLE {_ident(role.name)} {attributes} "
                f"PASSWORD {_literal(scram_verifier(role.password))}"
            )
            return
        except asyncpg.DuplicateObjectError:  # another run created it meanwhile
            return await _login_role(conn, role)
    if not (stored["rolcanlogin"] and not stored["rolsuper"] and not stored["rolinherit"]):
        await conn.execute(f"ALTER ROLE {_ident(role.name)} {attributes}")
    if not verifies(role.password, stored["rolpassword"]):
        verifier = _literal(scram_verifier(role.password))
        await conn.execute(f"ALTER ROLE {_ident(role.name)} PASSWORD {verifier}")


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a password (`SCRAM-SHA-256$iter:salt$stored:server`):
    given in place of the password, the password itself never reaches the server."""
    salt = os.urandom(16)
    stored_key, server_key = _scram_keys(password, salt, iterations)
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def verifies(password: str, verifier: str | None) -> bool:
    """Whether a stored SCRAM-SHA-256 verifier is the one of `password`."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier or "")
    if match is None:
        return False
    iterations, salt, stored_key, server_key = match.groups()
    expected = _scram_keys(password, base64.b64decode(salt), int(iterations))
    given = (base64.b64decode(stored_key), base64.b64decode(server_key))
    return all(hmac.compare_digest(a, b) for a, b in zip(expected, given, strict=True))


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    # RFC 5802/7677 as PostgreSQL implements it (SASLprep leaves ASCII passwords alone).
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _literal(text: str) -> str:
    """A SQL string literal (the verifier holds no quote, but say so in one place)."""
    return "'" + text.replace("'", "''") + "'"


async def _lock_down_database(conn: asyncpg.Connection, database: str) -> None:
    db = _ident(database)
    await conn.execute(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
    await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    for role in (*SERVICES, READER):
        await conn.execute(f"GRANT CONNECT ON DATABASE {db} TO {_ident(role)}")


async def _own_schema(conn: asyncpg.Connection, service: str) -> None:
    """The schema and every object in it belong to the service's role."""
    owner = _ident(service)
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {owner} AUTHORIZATION {owner}")
    await conn.execute(f"ALTER SCHEMA {owner} OWNER TO {owner}")
    await conn.execute(f"REVOKE ALL ON SCHEMA {owner} FROM PUBLIC")
    # Objects made before the roles existed (by a superuser) change hands.
    objects = await conn.fetch(
        """
        SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                              WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kind,
               format('%I.%I', n.nspname, c.relname) AS name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
          AND pg_get_userbyid(c.relowner) <> $1
          AND NOT (c.relkind = 'S' AND EXISTS (  -- an identity/serial sequence follows its table
              SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
        UNION ALL
        SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
               p.oid::regprocedure::text
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = $1 AND pg_get_userbyid(p.proowner) <> $1
        UNION ALL
        SELECT 'TYPE', format('%I.%I', n.nspname, t.typname)
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = $1 AND t.typtype IN ('e', 'd', 'c') AND t.typrelid = 0
          AND pg_get_userbyid(t.typowner) <> $1
        """,
        service,
    )
    for row in objects:
        await conn.execute(f"ALTER {row['kind']} {row['name']} OWNER TO {owner}")
    await conn.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"
    )
    await conn.execute(f"REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {owner} FROM PUBLIC")


async def _readable_by(conn: asyncpg.Connection, service: str, reader: str) -> None:
    schema, who = _ident(service), _ident(reader)
    await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {who}")
    await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {who}")
    await conn.execute(
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {schema} IN SCHEMA {schema} "
        f"GRANT SELECT ON TABLES TO {who}"
    )


def _ident(name: str) -> str:
    """A quoted SQL identifier (role, schema and database names come from settings)."""
    return '"' + name.replace('"', '""') + '"'
