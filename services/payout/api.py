"""Read-only HTTP routes of the payout service: a creator's (or an operator's) to read.

A payout request of another creator is answered 404 like an unknown request id, so a
token cannot learn which request ids exist; another creator's list is 403.
"""

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.payout.domain import Payout
from services.payout.service import PayoutService
from shared.http import authorize, bad_request, may_read, not_found

MAX_PAGE = 100

# In flight (holding, held, unknown) is one public status: pending.
_PUBLIC_STATUS = {"completed": "completed", "failed": "failed"}


def routes(service: PayoutService) -> Sequence[BaseRoute]:
    async def payout(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        found = await service.payout(request_id=request_id)
        if found is None or not may_read(request, found.creator_id):
            return not_found(f"no payout request {request_id}")
        return JSONResponse(_body(found))

    async def payouts_of(request: Request) -> Response:
        creator_id = request.path_params["creator_id"]
        authorize(request, creator_id)
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            return bad_request("limit must be an integer")
        if not 1 <= limit <= MAX_PAGE:
            return bad_request(f"limit must be between 1 and {MAX_PAGE}")
        items = await service.payouts_of(creator_id=creator_id, limit=limit)
        return JSONResponse({"items": [_body(p) for p in items]})

    return [
        Route("/v1/payouts/{request_id}", payout),
        Route("/v1/creators/{creator_id}/payouts", payouts_of),
    ]


def _body(payout: Payout) -> dict[str, Any]:
    return {
        "request_id": payout.request_id,
        "creator_id": payout.creator_id,
        "status": _PUBLIC_STATUS.get(payout.status, "pending"),
        "reason": payout.reason,
        "payout_id": payout.payout_id if payout.status != "failed" or payout.amount else None,
        "diamonds": payout.diamonds,
        "amount": payout.amount.model_dump() if payout.amount else None,
        "created_at": payout.created_at.isoformat() if payout.created_at else None,
    }
