"""Recharge rules: what a purchase request may buy, and what it becomes."""

from dataclasses import dataclass
from typing import Literal

from shared.contracts import PurchaseFailureReason, PurchaseRequested
from shared.money import Money

Status = Literal["pending", "completed", "failed", "reversed"]


@dataclass(frozen=True)
class Offer:
    """A package as the catalog sells it now, in one currency."""

    package_id: str
    coins: int
    bonus_coins: int
    price: Money


@dataclass(frozen=True)
class Purchase:
    request_id: str
    user_id: str
    package_id: str
    price: Money
    payment_method: str
    coins: int
    bonus_coins: int
    status: Status
    reason: PurchaseFailureReason | None = None
    payment_id: str | None = None


def refusal(request: PurchaseRequested, offer: Offer | None) -> PurchaseFailureReason | None:
    """Why the request must not be charged, or None when it may be."""
    if request.price.amount_minor <= 0:
        return "invalid_request"
    if offer is None:
        return "unknown_package"
    # Never charge a price the user did not see.
    if offer.price != request.price:
        return "price_mismatch"
    return None


def decide(request: PurchaseRequested, offer: Offer | None) -> Purchase:
    """The purchase a new request becomes: failed with a reason, or pending its charge."""
    reason = refusal(request, offer)
    coins = offer.coins if offer and reason is None else 0
    bonus = offer.bonus_coins if offer and reason is None else 0
    return Purchase(
        request_id=request.request_id,
        user_id=request.user_id,
        package_id=request.package_id,
        price=request.price,
        payment_method=request.payment_method,
        coins=coins,
        bonus_coins=bonus,
        status="failed" if reason else "pending",
        reason=reason,
    )
