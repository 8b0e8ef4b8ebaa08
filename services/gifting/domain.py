"""Gift rules: the catalog, what a request may ask, and how coins become diamonds.

Pure. The service loads the gifts a batch names and records what `decide` returns.
"""

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, NamedTuple

from services.gifting.errors import GiftAnswerMismatchError, UnknownGiftRequestError
from shared.contracts import GiftDebitAnswered, GiftRejectionReason, GiftRequested

Status = Literal["pending", "sent", "rejected"]


@dataclass(frozen=True)
class Gift:
    gift_id: str
    name: str
    coins: int
    active: bool = True


@dataclass(frozen=True)
class GiftRules:
    creator_share: Decimal  # at most four decimals (settings check it)
    max_quantity: int


class GiftOrder(NamedTuple):
    """A gift request as recorded: pending (waiting for the wallet), sent or rejected.

    A NamedTuple: immutable, and built in C (a frozen dataclass sets each of its twelve
    fields in Python); a gift builds several (decided, locked, settled)."""

    request_id: str
    sender_id: str
    creator_id: str
    gift_id: str
    quantity: int
    stream_id: str | None
    video_id: str | None
    fingerprint: str
    status: Status
    reason: GiftRejectionReason | None = None
    coins: int = 0
    diamonds: Decimal = Decimal(0)


def creator_diamonds(coins: int, share: Decimal) -> Decimal:
    """The creator's diamonds for `coins`: exact, never rounded (2 Roses at 50% = 1)."""
    return coins * share


def refusal(
    request: GiftRequested, gift: Gift | None, rules: GiftRules
) -> GiftRejectionReason | None:
    """Why the request is refused before any coin moves, or None when it may be paid."""
    if (request.stream_id is None) == (request.video_id is None):
        return "invalid_request"  # a gift goes to exactly one live stream or video
    if request.sender_id == request.creator_id:
        return "self_gift"
    if gift is None or not gift.active:
        return "unknown_gift"
    if not 1 <= request.quantity <= rules.max_quantity:
        return "invalid_quantity"
    return None


def decide(request: GiftRequested, gift: Gift | None, rules: GiftRules) -> GiftOrder:
    """Record a new request: rejected with its reason, or pending with its price."""
    reason = refusal(request, gift, rules)
    coins = 0 if reason is not None or gift is None else gift.coins * request.quantity
    return GiftOrder(  # built once: a batch decides hundreds
        request_id=request.request_id,
        sender_id=request.sender_id,
        creator_id=request.creator_id,
        gift_id=request.gift_id,
        quantity=request.quantity,
        stream_id=request.stream_id,
        video_id=request.video_id,
        fingerprint=fingerprint(request),
        status="rejected" if reason else "pending",
        reason=reason,
        coins=coins,
        diamonds=creator_diamonds(coins, rules.creator_share) if coins else Decimal(0),
    )


def answer(order: GiftOrder | None, answer: GiftDebitAnswered) -> GiftOrder | None:
    """The request as the wallet's answer settles it (sent, or rejected with the
    wallet's reason), or None for a redelivery of the answer it already got.

    Only a request this service sent to the wallet, with the same sender, creator and
    coins, that is pending (or got this very outcome) is settled: a forged answer
    would announce a gift nobody paid for, or refuse one that was paid.
    """
    if order is None:
        raise UnknownGiftRequestError(f"gift answer for {answer.request_id}: no such request")
    if (answer.sender_id, answer.creator_id) != (order.sender_id, order.creator_id) or (
        answer.coins is not None and answer.coins != order.coins
    ):
        raise GiftAnswerMismatchError(
            f"gift answer for {answer.request_id} says {answer.sender_id} -> "
            f"{answer.creator_id}, {answer.coins} coins; the request is {order.sender_id} -> "
            f"{order.creator_id}, {order.coins} coins"
        )
    reason = None if answer.debited else answer.reason or "invalid_request"
    status: Status = "sent" if reason is None else "rejected"
    if order.status == "pending":
        return order._replace(status=status, reason=reason)
    # Priced requests cost coins; one rejected before pricing never went to the wallet.
    if order.coins > 0 and (order.status, order.reason) == (status, reason):
        return None
    raise GiftAnswerMismatchError(
        f"gift answer for {answer.request_id} says {status} ({reason}); the request is "
        f"{order.status} ({order.reason})"
    )


def fingerprint(request: GiftRequested) -> str:
    """What makes a repeated request_id the same request (its time may differ)."""
    content = "|".join(
        (
            request.sender_id,
            request.creator_id,
            request.gift_id,
            str(request.quantity),
            request.stream_id or "",
            request.video_id or "",
        )
    )
    return hashlib.sha256(content.encode()).hexdigest()
