"""Cash-out rules: who may be paid, how much, and what diamonds are worth in money.

Pure. The service loads the creator and what they were paid today, `decide` says
whether a request may go on to reserve diamonds, and `amount` prices it.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Literal

from shared.contracts import PayoutFailureReason, PayoutRequested
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
        """What `diamonds` pay in `currency`, in minor units, rounded down: a creator is
        never paid more than the diamonds are worth (a fraction of a cent stays)."""
        units = diamonds * self.diamond_value_usd / self.usd_per_unit[currency] * 100
        return Money(amount_minor=int(units.to_integral_value(ROUND_FLOOR)), currency=currency)

    def usd_minor(self, diamonds: int) -> int:
        """The diamonds' worth in US cents, rounded up, for the daily limit (never
        exceeded by rounding)."""
        cents = diamonds * self.diamond_value_usd * 100
        return int(cents.to_integral_value(ROUND_CEILING))


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


def fingerprint(request: PayoutRequested) -> str:
    """What makes a repeated request_id the same request (its time may differ)."""
    content = f"{request.creator_id}|{request.diamonds}"
    return hashlib.sha256(content.encode()).hexdigest()
