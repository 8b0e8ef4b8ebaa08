"""Every SQL statement of the gifting service."""

import asyncpg

from services.gifting.domain import Gift
from shared.db import Connection


class GiftingRepository:
    async def list_active_gifts(self, conn: Connection | asyncpg.Pool) -> list[Gift]:
        rows = await conn.fetch(
            "SELECT gift_id, name, coins FROM gifts WHERE active ORDER BY coins, gift_id"
        )
        return [Gift(row["gift_id"], row["name"], row["coins"]) for row in rows]
