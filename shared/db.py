"""The PostgreSQL pool of a service, bound to the schema it owns."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection = asyncpg.Connection | PoolConnectionProxy
"""What repositories receive: a plain connection or one borrowed from the pool."""


class Database:
    """A lazily opened asyncpg pool whose connections see only the service's schema.

    The pool outlives a PostgreSQL restart on its own: asyncpg hands a connection the
    server closed back to the pool, and the next `acquire` opens a new one.
    """

    CONNECT_TIMEOUT_S = 5.0  # a server that does not answer is retried, not waited for

    def __init__(self, dsn: str, *, schema: str, min_size: int = 2, max_size: int = 10) -> None:
        self.dsn = dsn
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self.after_commit: Callable[[], None] | None = None
        """Called after a `transaction` that asked for it (`call_after_commit`) committed:
        the process's outbox relay, kicked to publish what was just written."""

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database pool is not open")
        return self._pool

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            server_settings={"search_path": self.schema, "application_name": self.schema},
            reset=_keep_session,
        )

    async def connect(self, *, purpose: str) -> asyncpg.Connection:
        """A connection of its own, outside the pool, seeing the same schema.

        For a session that lives as long as the process (the relay's LISTEN): it never
        holds one of the pool's slots, and whoever opens it closes it and opens a new
        one when it is lost. `purpose` names it in `pg_stat_activity.application_name`
        (`<schema>:<purpose>`), so an operator tells it from the pool's connections.
        """
        return await asyncpg.connect(
            self.dsn,
            timeout=self.CONNECT_TIMEOUT_S,
            server_settings={
                "search_path": self.schema,
                "application_name": f"{self.schema}:{purpose}",
            },
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection inside a transaction: committed on exit, rolled back on error."""
        current = _Transaction(self)
        token = _current.set(current)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn
        finally:
            _current.reset(token)
        # Committed (an error or a rollback skipped this) and the connection is back in
        # the pool, where the relay will want one.
        if current.call_after_commit and self.after_commit is not None:
            self.after_commit()

    async def ping(self) -> bool:
        """True when PostgreSQL answers a query."""
        try:
            return bool(await self.pool.fetchval("SELECT 1") == 1)
        except (OSError, asyncpg.PostgresError, RuntimeError):
            return False


@dataclass
class _Transaction:
    db: Database
    call_after_commit: bool = False


_current: ContextVar[_Transaction | None] = ContextVar("transaction", default=None)


def call_after_commit() -> bool:
    """Ask the `Database.transaction` this code runs in to call its database's
    `after_commit` once it has committed (never if it rolls back).

    False when nobody in this process will be called: outside such a transaction, or
    when the database has no `after_commit`.
    """
    current = _current.get()
    if current is None or current.db.after_commit is None:
        return False
    current.call_after_commit = True
    return True


async def _keep_session(_: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on every release (one more round trip per transaction).

    Nothing here leaves session state behind: advisory locks are transaction-scoped,
    no cursor outlives its transaction, and the relay's LISTEN keeps its own connection.
    """
