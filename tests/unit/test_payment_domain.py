from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.payment.domain import Activity, Decider, Offer, Promotion, RiskLimits, fingerprint
from shared.contracts import PurchaseRequested
from shared.money import Money

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LIMITS = RiskLimits(
    daily_cap_usd_minor=250_000,
    purchases_per_hour=20,
    usd_per_unit={"USD": Decimal(1), "EUR": Decimal("1.08")},
)
PROMO = Promotion(10, starts_at=NOW - timedelta(hours=1), ends_at=NOW + timedelta(hours=1))
OFFERS = {
    ("coins_70", "USD"): Offer("coins_70", 70, Money(amount_minor=99, currency="USD"), (PROMO,)),
    ("coins_17500", "USD"): Offer("coins_17500", 17500, Money(amount_minor=24999, currency="USD")),
    ("coins_17500", "EUR"): Offer("coins_17500", 17500, Money(amount_minor=24999, currency="EUR")),
}


def request(
    package: str = "coins_70",
    amount: int = 99,
    currency: str = "USD",
    user: str = "u1",
    at: datetime = NOW,
    method: str = "pm_card_ok",
) -> PurchaseRequested:
    return PurchaseRequested(
        request_id=f"r-{package}-{amount}-{at.isoformat()}",
        user_id=user,
        package_id=package,
        price=Money(amount_minor=amount, currency=currency),
        payment_method=method,
        occurred_at=at,
    )


def decider(**activity: Activity) -> Decider:
    return Decider(LIMITS, OFFERS, dict(activity))


def test_a_matching_request_is_pending_its_charge() -> None:
    purchase = decider().decide(request(), now=NOW)
    assert (purchase.status, purchase.coins, purchase.reason) == ("pending", 70, None)


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (request(package="coins_71"), "unknown_package"),
        (request(amount=98), "price_mismatch"),
        (request(currency="EUR"), "price_mismatch"),  # sold, but not at a EUR price
        (request(amount=-99), "invalid_request"),
        (request(amount=0), "invalid_request"),
        (request(amount=2**63), "invalid_request"),  # no bigint holds it
        (request(currency="JPY"), "invalid_request"),  # a currency we do not sell in
    ],
)
def test_refusals_name_their_reason(req: PurchaseRequested, reason: str) -> None:
    purchase = decider().decide(req, now=NOW)
    assert (purchase.status, purchase.reason, purchase.coins) == ("failed", reason, 0)


def test_a_promotion_counts_when_the_request_is_received_inside_its_window() -> None:
    inside = decider().decide(request(at=NOW - timedelta(minutes=59)), now=NOW)
    assert inside.bonus_coins == 10
    # The client's occurred_at is not trusted, either way: what counts is when it is received.
    backdated = decider().decide(request(at=NOW - timedelta(hours=2)), now=NOW + timedelta(hours=2))
    assert backdated.bonus_coins == 0
    future = decider().decide(request(at=NOW + timedelta(hours=3)), now=NOW)
    assert future.bonus_coins == 10


def test_the_daily_cap_counts_earlier_spend_and_earlier_requests_of_the_batch() -> None:
    d = decider(u1=Activity(spent_today_usd_minor=24999 * 9))
    assert d.decide(request("coins_17500", 24999), now=NOW).status == "pending"  # $2,499.90
    refused = d.decide(request("coins_17500", 24999, at=NOW + timedelta(seconds=1)), now=NOW)
    assert refused.reason == "limit_exceeded"
    assert d.decide(request(), now=NOW).reason == "limit_exceeded"  # even $0.99 is over
    assert d.decide(request(user="u2"), now=NOW).status == "pending"  # per user


def test_other_currencies_count_at_their_dollar_equivalent_rounded_up() -> None:
    assert LIMITS.in_usd_minor(Money(amount_minor=24999, currency="EUR")) == 26999  # 269.9892
    d = decider(u1=Activity(spent_today_usd_minor=250_000 - 26999))
    assert d.decide(request("coins_17500", 24999, "EUR"), now=NOW).status == "pending"
    d = decider(u1=Activity(spent_today_usd_minor=250_000 - 26998))
    assert d.decide(request("coins_17500", 24999, "EUR"), now=NOW).reason == "limit_exceeded"


def test_at_most_twenty_purchases_in_a_rolling_hour() -> None:
    d = decider(u1=Activity(purchases_last_hour=19))
    assert d.decide(request(), now=NOW).status == "pending"
    assert d.decide(request(at=NOW + timedelta(seconds=1)), now=NOW).reason == "limit_exceeded"


def test_the_fingerprint_ignores_time_but_not_content() -> None:
    assert fingerprint(request()) == fingerprint(request(at=NOW + timedelta(minutes=5)))
    assert fingerprint(request()) != fingerprint(request(method="pm_card_declined"))
    assert fingerprint(request()) != fingerprint(request(user="u2"))


@pytest.mark.parametrize(
    ("price", "usd_cents"),
    [
        (Money(amount_minor=160, currency="JPY"), 108),  # ¥160 at 0.0067: $1.072 -> 108
        (Money(amount_minor=40_000, currency="JPY"), 26_800),  # ¥40,000: $268.00
        (Money(amount_minor=1_500, currency="KWD"), 489),  # 1.500 KWD at 3.26: $4.89
        (Money(amount_minor=1, currency="KWD"), 1),  # one fils: $0.00326 -> 1 cent
    ],
)
def test_the_daily_cap_reads_each_price_in_its_own_minor_unit(price: Money, usd_cents: int) -> None:
    limits = RiskLimits(
        daily_cap_usd_minor=250_000,
        purchases_per_hour=20,
        usd_per_unit={"JPY": Decimal("0.0067"), "KWD": Decimal("3.26")},
    )
    assert limits.in_usd_minor(price) == usd_cents
