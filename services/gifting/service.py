"""Gifting use cases."""

from services.gifting.domain import Gift
from services.gifting.repository import GiftingRepository
from shared.db import Database


class GiftingService:
    def __init__(self, db: Database, repository: GiftingRepository) -> None:
        self._db = db
        self._repository = repository

    async def catalog(self) -> list[Gift]:
        return await self._repository.list_active_gifts(self._db.pool)
