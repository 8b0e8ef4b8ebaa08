"""Recharge rules: what a purchase request may buy, and what it becomes."""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

from shared.contracts import PurchaseFailureReason, PurchaseRequested
from shared.money import Money

Status = Literal["pending", "completed", "failed", "reversed"]

MAX_AMOUNT_MINOR = 2**63 - 1
"""The largest price a request may name (a bigint); more is `invalid_request`, recorded as asked."""


@dataclass(frozen=True)
class Promotion:
    """Bonus coins on a package while `starts_at <= t < ends_at`."""

    bonus_coins: int
    starts_at: datetime
    ends_at: datetime


@dataclass(frozen=True)
class Offer:
    """A package as the catalog sells it in one currency, with its promotions."""

    package_id: str
    coins: int
    price: Money
    promotions: tuple[Promotion, ...] = ()

    def bonus_at(self, at: datetime) -> int:
        """The bonus of the best promotion running at `at`, else 0."""
        running = [p.bonus_coins for p in self.promotions if p.starts_at <= at < p.ends_at]
        return max(running, default=0)


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
    fingerprint: str
    reason: PurchaseFailureReason | None = None
    payment_id: str | None = None


@dataclass(frozen=True)
class RiskLimits:
    daily_cap_usd_minor: int
    purchases_per_hour: int
    usd_per_unit: Mapping[str, Decimal]

    def in_usd_minor(self, price: Money) -> int:
        """The price in US cents, rounded up: the cap is never exceeded by rounding.
        The price is read in its own currency's minor unit (¥500 is 500 yen, 1.500 KWD
        is 1500 fils)."""
        usd = price.units() * self.usd_per_unit[price.currency]
        return Money.of_units(usd, "USD", rounding="up").amount_minor


@dataclass
class Activity:
    """One user's purchases that count against the limits: spend today, count this hour."""

    spent_today_usd_minor: int = 0
    purchases_last_hour: int = 0

    def add(self, spent_usd_minor: int) -> None:
        self.spent_today_usd_minor += spent_usd_minor
        self.purchases_last_hour += 1


@dataclass
class Decider:
    """Decides a batch of new requests in order, counting earlier ones against the limits."""

    limits: RiskLimits
    offers: Mapping[tuple[str, str], Offer]
    activity: dict[str, Activity] = field(default_factory=dict)

    def decide(self, request: PurchaseRequested, *, now: datetime) -> Purchase:
        """The purchase a new request becomes: failed with a reason, or pending its charge.

        A promotion applies when this service receives the request (`now`) inside its
        window: the client's `occurred_at` is not trusted, so a request backdated into
        an ended promotion gets no bonus.
        """
        offer = self.offers.get((request.package_id, request.price.currency))
        reason = self._refusal(request, offer)
        if reason is None:
            assert offer is not None
            self.activity.setdefault(request.user_id, Activity()).add(
                self.limits.in_usd_minor(request.price)
            )
        return Purchase(
            request_id=request.request_id,
            user_id=request.user_id,
            package_id=request.package_id,
            price=request.price,
            payment_method=request.payment_method,
            coins=offer.coins if offer and reason is None else 0,
            bonus_coins=offer.bonus_at(now) if offer and not reason else 0,
            status="failed" if reason else "pending",
            fingerprint=fingerprint(request),
            reason=reason,
        )

    def _refusal(
        self, request: PurchaseRequested, offer: Offer | None
    ) -> PurchaseFailureReason | None:
        """Why the request must not be charged, or None when it may be."""
        if (
            not 0 < request.price.amount_minor <= MAX_AMOUNT_MINOR
            or request.price.currency not in self.limits.usd_per_unit
        ):
            return "invalid_request"
        if offer is None:
            sold = any(package == request.package_id for package, _ in self.offers)
            return "price_mismatch" if sold else "unknown_package"
        if offer.price != request.price:
            return "price_mismatch"  # never charge a price the user did not see
        activity = self.activity.get(request.user_id, Activity())
        if activity.purchases_last_hour >= self.limits.purchases_per_hour:
            return "limit_exceeded"
        spent = activity.spent_today_usd_minor + self.limits.in_usd_minor(request.price)
        if spent > self.limits.daily_cap_usd_minor:
            return "limit_exceeded"
        return None


def fingerprint(request: PurchaseRequested) -> str:
    """What makes a repeated request_id the same request (its time may differ)."""
    content = "|".join(
        (
            request.user_id,
            request.package_id,
            str(request.price.amount_minor),
            request.price.currency,
            request.payment_method,
        )
    )
    return hashlib.sha256(content.encode()).hexdigest()


NoticeOutcome = Literal[
    "accepted", "duplicate", "idempotency_conflict", "unknown_payment", "user_mismatch"
]
"""What became of a signed chargeback notice from the provider's webhook."""


def notice_refusal(purchase: Purchase | None, *, user_id: str) -> NoticeOutcome | None:
    """Why a chargeback notice does not match what payment knows, or None when it does:
    it must name a payment this service completed (reversed since or not), for that user."""
    if purchase is None or purchase.payment_id is None:
        return "unknown_payment"
    if purchase.user_id != user_id:
        return "user_mismatch"
    return None
