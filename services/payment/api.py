"""Read-only HTTP routes of the payment service.

The package catalog is open; a purchase is its user's (or an operator's) to read. For
anyone else it is answered 404 like an unknown request id, so a token cannot learn which
request ids exist.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.payment.service import PaymentService
from shared.http import OpenRoute, bad_request, may_read, not_found


def routes(service: PaymentService) -> Sequence[BaseRoute]:
    async def packages(request: Request) -> Response:
        currency = request.query_params.get("currency", "USD").upper()
        if len(currency) != 3 or not currency.isalpha():
            return bad_request("currency must be an ISO 4217 code such as USD")
        offers = await service.offers(currency=currency)
        now = datetime.now(UTC)
        return JSONResponse(
            {
                "packages": [
                    {
                        "package_id": offer.package_id,
                        "coins": offer.coins,
                        "bonus_coins": offer.bonus_at(now),
                        "price": offer.price.model_dump(),
                    }
                    for offer in offers
                ]
            }
        )

    async def purchase(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        found = await service.purchase(request_id=request_id)
        if found is None or not may_read(request, found.user_id):
            return not_found(f"no purchase with request_id {request_id!r}")
        return JSONResponse(
            {
                "request_id": found.request_id,
                "user_id": found.user_id,
                "status": found.status,
                "reason": found.reason,
                "payment_id": found.payment_id,
            }
        )

    return [
        OpenRoute("/v1/packages", packages),
        Route("/v1/purchases/{request_id}", purchase),
    ]
