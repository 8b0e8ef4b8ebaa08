"""Read-only HTTP routes of the gifting service."""

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.gifting.service import GiftingService


def routes(service: GiftingService) -> Sequence[BaseRoute]:
    async def gifts(_: Request) -> Response:
        catalog = await service.catalog()
        return JSONResponse(
            {"gifts": [{"gift_id": g.gift_id, "name": g.name, "coins": g.coins} for g in catalog]}
        )

    return [Route("/v1/gifts", gifts)]
