"""Cash-out rules: who may be paid, how much, and what diamonds are worth in money.

Pure. The service loads the creator and what they were paid today, `decide` says
whether a request may go on to reserve diamonds, and `amount` prices it.
"""

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Literal

from services.payout.errors import HoldAnswerMismatchError, UnknownPayoutError
from shared.contracts import DiamondsHoldAnswered, PayoutFailureReason, PayoutRequested
from shared.money import Money

MAX_DIAMONDS = 10**14
"""More than any creator can hold; a larger request is nonsense, not a ledger overflow."""

Status = Literal["holding", "held", "unknown", "completed", "failed"]
"""holding: the wallet is asked to reserve the diamonds; held: reserved, the provider
is being paid; unknown: the provider's answer was lost, reconciliation will ask;
completed and failed are final."""


@dataclass(frozen=True)
class Creator:
    creator_id: str
    verified: bool
    payout_method: str
    currency: str


@dataclass(frozen=True)
class PayoutRules:
    min_diamonds: int
    daily_limit_usd_minor: int
    diamond_value_usd: Decimal
    usd_per_unit: dict[str, Decimal]

    def amount(self, diamonds: int, currency: str) -> Money:
        """What `diamonds` pay in `currency`, in its minor unit (ISO 4217: cents, yen,
        fils), rounded down: a creator is never paid more than the diamonds are worth
        (a fraction of the minor unit stays)."""
        units = diamonds * self.diamond_value_usd / self.usd_per_unit[currency]
        return Money.of_units(units, currency, rounding="down")

    def usd_minor(self, diamonds: int) -> int:
        """The diamonds' worth in US cents, rounded up, for the daily limit (never
        exceeded by rounding)."""
        return Money.of_units(diamonds * self.diamond_value_usd, "USD", rounding="up").amount_minor


@dataclass(frozen=True)
class Payout:
    request_id: str
    payout_id: str
    creator_id: str
    diamonds: int
    status: Status
    fingerprint: str
    reason: PayoutFailureReason | None = None
    amount: Money | None = None
    payout_method: str | None = None
    usd_minor: int = 0
    created_at: datetime | None = None


def refusal(
    request: PayoutRequested, creator: Creator | None, rules: PayoutRules, paid_today_usd_minor: int
) -> PayoutFailureReason | None:
    """Why the payout must not even reserve diamonds, or None when it may."""
    if not 0 < request.diamonds <= MAX_DIAMONDS:
        return "invalid_request"
    if creator is None or not creator.verified:
        return "not_verified"
    if creator.currency not in rules.usd_per_unit:
        return "invalid_request"  # the creator's currency cannot be paid
    if request.diamonds < rules.min_diamonds:
        return "below_minimum"
    if paid_today_usd_minor + rules.usd_minor(request.diamonds) > rules.daily_limit_usd_minor:
        return "daily_limit_exceeded"
    return None


def decide(
    request: PayoutRequested,
    creator: Creator | None,
    rules: PayoutRules,
    paid_today_usd_minor: int,
    payout_id: str,
) -> Payout:
    """A new request: failed with its reason, or priced and on its way to the wallet."""
    reason = refusal(request, creator, rules, paid_today_usd_minor)
    if reason is not None or creator is None:
        return Payout(
            request_id=request.request_id,
            payout_id=payout_id,
            creator_id=request.creator_id,
            diamonds=request.diamonds,
            status="failed",
            fingerprint=fingerprint(request),
            reason=reason or "not_verified",
        )
    return Payout(
        request_id=request.request_id,
        payout_id=payout_id,
        creator_id=request.creator_id,
        diamonds=request.diamonds,
        status="holding",
        fingerprint=fingerprint(request),
        amount=rules.amount(request.diamonds, creator.currency),
        payout_method=creator.payout_method,
        usd_minor=rules.usd_minor(request.diamonds),
    )


HOLD_FAILURES: frozenset[PayoutFailureReason] = frozenset(
    {"insufficient_diamonds", "provider_rejected"}
)
"""How a payout that asked the wallet for a hold can fail: the wallet refused it, or
it was held and the bank rejected the payment."""


def asked_for_hold(payout: Payout) -> bool:
    """Whether the wallet was asked to hold this payout's diamonds."""
    return payout.status != "failed" or payout.reason in HOLD_FAILURES


def answer_hold(payout: Payout | None, answer: DiamondsHoldAnswered) -> Payout | None:
    """The payout as the wallet's hold answer moves it (held, or failed with
    insufficient_diamonds), or None for a redelivery of the answer it already got.

    Only a payout this service asked a hold for, with the same payout_id, creator and
    diamonds, that is waiting for this answer (or got it already) is moved: anything
    else is refused, since a forged `held` would pay out diamonds nobody reserved.
    """
    if payout is None:
        raise UnknownPayoutError(f"hold answer for {answer.request_id}: no such payout")
    if (answer.payout_id, answer.creator_id) != (payout.payout_id, payout.creator_id) or (
        answer.diamonds not in (0, payout.diamonds)  # 0: an answer that does not say
    ):
        raise HoldAnswerMismatchError(
            f"hold answer for {answer.request_id} says {answer.payout_id}, "
            f"{answer.creator_id}, {answer.diamonds} diamonds; the payout is "
            f"{payout.payout_id}, {payout.creator_id}, {payout.diamonds} diamonds"
        )
    if payout.status == "holding":
        if answer.held:
            return replace(payout, status="held")
        return replace(payout, status="failed", reason="insufficient_diamonds")
    if asked_for_hold(payout) and answer.held == (payout.reason != "insufficient_diamonds"):
        return None
    raise HoldAnswerMismatchError(
        f"hold answer for {answer.request_id} says held={answer.held}; the payout is "
        f"{payout.status} ({payout.reason or 'no reason'})"
    )


def fingerprint(request: PayoutRequested) -> str:
    """What makes a repeated request_id the same request (its time may differ)."""
    content = f"{request.creator_id}|{request.diamonds}"
    return hashlib.sha256(content.encode()).hexdigest()
