"""Read-only HTTP routes of the wallet: a user's balance and history are theirs (or an
operator's) to read; another user's are 403."""

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.wallet.domain import AccountKind, Unit, coin_source, diamonds_of
from services.wallet.reads import HistoryItem, ReadService
from shared.http import authorize, bad_request
from shared.money import format_diamonds

MAX_PAGE = 200


def routes(service: ReadService) -> Sequence[BaseRoute]:
    async def balance(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        authorize(request, user_id)
        found = await service.balance(user_id=user_id)
        return JSONResponse(
            {
                "user_id": found.user_id,
                "coins": found.coins,
                "diamonds": format_diamonds(found.diamonds),
                "diamonds_on_hold": format_diamonds(found.diamonds_on_hold),
                "frozen": found.frozen,
                "spending_limits": {
                    "day": found.spending_limits.day,
                    "week": found.spending_limits.week,
                    "month": found.spending_limits.month,
                },
            }
        )

    async def transactions(request: Request) -> Response:
        user_id = request.path_params["user_id"]
        authorize(request, user_id)
        try:
            limit = int(request.query_params.get("limit", "50"))
            cursor = request.query_params.get("cursor")
            before = int(cursor) if cursor else None
        except ValueError:
            return bad_request("limit and cursor must be integers")
        if not 1 <= limit <= MAX_PAGE:
            return bad_request(f"limit must be between 1 and {MAX_PAGE}")
        items, next_cursor = await service.history(
            user_id=user_id, before_entry_id=before, limit=limit
        )
        return JSONResponse(
            {
                "items": [_history_item(item) for item in items],
                "next_cursor": str(next_cursor) if next_cursor is not None else None,
            }
        )

    return [
        Route("/v1/users/{user_id}/balance", balance),
        Route("/v1/users/{user_id}/transactions", transactions),
    ]


def _history_item(item: HistoryItem) -> dict[str, Any]:
    counter = AccountKind(item.counter_kind) if item.counter_kind else None
    in_diamonds = AccountKind(item.account_kind).unit is Unit.DIAMONDS
    return {
        "entry_id": item.entry_id,
        "transaction_id": item.tx_id,
        "kind": item.kind,  # purchase, clawback, gift, ...
        "account": item.account_kind,  # user_coins, user_diamonds, user_diamond_hold
        "counter_account": item.counter_kind,  # the other side of the movement
        "coin_source": coin_source(counter),  # purchased / bonus coins, else null
        # Coins as integers; diamonds as the contract writes them (1, "0.5").
        "amount": format_diamonds(diamonds_of(item.amount)) if in_diamonds else item.amount,
        "balance_after": (
            format_diamonds(diamonds_of(item.balance_after)) if in_diamonds else item.balance_after
        ),
        "request_id": item.request_id,
        "created_at": item.created_at.isoformat(),
    }
