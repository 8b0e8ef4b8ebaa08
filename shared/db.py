"""The PostgreSQL pool of a service, bound to the schema it owns."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection = asyncpg.Connection | PoolConnectionProxy
"""What repositories receive: a plain connection or one borrowed from the pool."""


class Database:
    """A lazily opened asyncpg pool whose connections see only the service's schema."""

    def __init__(self, dsn: str, *, schema: str, min_size: int = 2, max_size: int = 10) -> None:
        self.dsn = dsn
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

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

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection inside a transaction: committed on exit, rolled back on error."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def ping(self) -> bool:
        """True when PostgreSQL answers a query."""
        try:
            return bool(await self.pool.fetchval("SELECT 1") == 1)
        except (OSError, asyncpg.PostgresError, RuntimeError):
            return False


async def _keep_session(_: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on every release (one more round trip per transaction).

    Nothing here leaves session state behind: advisory locks are transaction-scoped,
    no cursor outlives its transaction, and the relay's LISTEN keeps its own connection.
    """
