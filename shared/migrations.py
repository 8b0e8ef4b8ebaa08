"""Per-service schema migrations, applied with yoyo from `shared/sql/` and
`services/<name>/migrations/`.

Each service owns one PostgreSQL schema named after it; yoyo records what it applied in
that schema and takes a lock, so replicas starting together apply each migration once.
"""

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

SERVICES: tuple[str, ...] = ("payment", "wallet", "gifting", "payout")


KIT_MIGRATIONS = Path(__file__).parent / "sql"


def migrations_dir(service: str) -> Path:
    """The folder holding a service's SQL migrations."""
    return Path(str(resources.files(f"services.{service}") / "migrations"))


def _yoyo_uri(database_url: str, schema: str) -> str:
    parts = urlsplit(database_url)
    query = f"{parts.query}&schema={schema}" if parts.query else f"schema={schema}"
    return urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, query, ""))


def apply(database_url: str, service: str) -> list[str]:
    """Create the service's schema if needed and apply its pending migrations.

    Returns the ids of the migrations applied by this call (empty when up to date).
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        # With least privilege the schema exists already, owned by the service's role,
        # which may not create schemas: only create it when it is missing.
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (service,))
        if found.fetchone() is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(service)))
    backend = get_backend(_yoyo_uri(database_url, service))
    # The kit's tables (inbox, outbox) first, then the service's own, in one history.
    migrations = read_migrations(str(KIT_MIGRATIONS), str(migrations_dir(service)))
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()  # yoyo leaves its connection open otherwise
    return [migration.id for migration in pending]


def apply_all(database_url: str | Callable[[str], str]) -> dict[str, list[str]]:
    """Apply every service's migrations; returns what each service applied.

    `database_url` is one URL for all, or a function giving each service's own URL, so
    that each service's migrations run as the role that owns its schema.
    """
    url_of = database_url if callable(database_url) else (lambda _: database_url)
    return {service: apply(url_of(service), service) for service in SERVICES}
