"""Gifting reads a catalog row at most once per TTL: a retired gift is refused within
it, a gift added to the catalog is seen at once (absence is never kept)."""

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, cast

from prometheus_client import CollectorRegistry

from services.gifting.domain import Gift, GiftRules
from services.gifting.repository import GiftingRepository
from services.gifting.service import GiftingMetrics, GiftingService
from shared.db import Connection, Database


class Catalog:
    """The catalog table as an operator edits it, counting the service's reads."""

    def __init__(self) -> None:
        self.gifts: dict[str, Gift] = {"rose": Gift("rose", "Rose", 1)}
        self.reads: list[list[str]] = []

    async def get_gifts(self, conn: Connection, *, gift_ids: Sequence[str]) -> dict[str, Gift]:
        self.reads.append(list(gift_ids))
        return {g: self.gifts[g] for g in gift_ids if g in self.gifts}


def _service(catalog: Catalog, ttl_s: float) -> GiftingService:
    return GiftingService(
        cast(Database, None),
        cast(GiftingRepository, catalog),
        GiftRules(creator_share=Decimal("0.5"), max_quantity=99),
        GiftingMetrics(CollectorRegistry()),
        catalog_ttl_s=ttl_s,
    )


def test_a_gift_is_read_once_per_ttl_and_a_retired_one_is_seen_after_it() -> None:
    async def scenario() -> None:
        catalog = Catalog()
        service = _service(catalog, ttl_s=0.2)
        conn = cast(Any, None)
        assert (await service._get_gifts(conn, ["rose"]))["rose"].active
        assert (await service._get_gifts(conn, ["rose"]))["rose"].active
        assert catalog.reads == [["rose"]]  # the second batch read nothing
        catalog.gifts["rose"] = Gift("rose", "Rose", 1, active=False)  # retired by SQL
        await asyncio.sleep(0.25)
        assert not (await service._get_gifts(conn, ["rose"]))["rose"].active
        assert catalog.reads == [["rose"], ["rose"]]

    asyncio.run(scenario())


def test_a_gift_missing_from_the_catalog_is_read_again_every_time() -> None:
    async def scenario() -> None:
        catalog = Catalog()
        service = _service(catalog, ttl_s=60)
        conn = cast(Any, None)
        assert await service._get_gifts(conn, ["panda", "rose"]) == {"rose": catalog.gifts["rose"]}
        catalog.gifts["panda"] = Gift("panda", "Panda", 5)  # added by an operator
        assert set(await service._get_gifts(conn, ["panda", "rose"])) == {"panda", "rose"}
        assert catalog.reads == [["panda", "rose"], ["panda"]]

    asyncio.run(scenario())
