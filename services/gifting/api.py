"""Read-only HTTP routes of the gifting service.

Both are open (no bearer token): the gift catalog is the same for everyone, and a
stream's leaderboard is what every viewer of the stream sees on screen.
"""

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from services.gifting.service import GiftingService
from shared.http import OpenRoute, bad_request

DEFAULT_LIMIT = 10


def routes(service: GiftingService, *, max_limit: int) -> Sequence[BaseRoute]:
    async def gifts(_: Request) -> Response:
        catalog = await service.catalog()
        return JSONResponse(
            {"gifts": [{"gift_id": g.gift_id, "name": g.name, "coins": g.coins} for g in catalog]}
        )

    async def leaderboard(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", DEFAULT_LIMIT))
        except ValueError:
            return bad_request("limit must be an integer")
        if not 1 <= limit <= max_limit:
            return bad_request(f"limit must be between 1 and {max_limit}")
        stream_id = request.path_params["stream_id"]
        entries = await service.leaderboard(stream_id=stream_id, limit=limit)
        return JSONResponse(
            {
                "stream_id": stream_id,
                "entries": [{"sender_id": sender, "coins": coins} for sender, coins in entries],
            }
        )

    return [
        OpenRoute("/v1/gifts", gifts),
        OpenRoute("/v1/streams/{stream_id}/leaderboard", leaderboard),
    ]
