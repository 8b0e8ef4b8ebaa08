"""Payout pricing in the creator's currency, at each ISO 4217 exponent, rounded down."""

from decimal import Decimal

import pytest

from services.payout.domain import PayoutRules

RULES = PayoutRules(
    min_diamonds=2_000,
    daily_limit_usd_minor=100_000,
    diamond_value_usd=Decimal("0.005"),
    usd_per_unit={
        "USD": Decimal(1),
        "EUR": Decimal("1.08"),
        "JPY": Decimal("0.0067"),
        "KWD": Decimal("3.26"),
    },
)


@pytest.mark.parametrize(
    ("diamonds", "currency", "amount_minor"),
    [
        (4_000, "USD", 2000),  # $20.00
        (4_000, "EUR", 1851),  # 18.5185... EUR: 18.51
        (4_000, "JPY", 2985),  # 2985.07... yen: ¥2985, not ¥298,507
        (4_000, "KWD", 6134),  # 6.13496... KWD: 6.134 (fils, three places)
        (2_001, "USD", 1000),  # $10.005: the half cent stays
        (2_001, "JPY", 1493),  # 1493.28... yen
        (2_001, "KWD", 3069),  # 3.06901... KWD
    ],
)
def test_diamonds_are_paid_in_the_currencys_minor_unit_rounded_down(
    diamonds: int, currency: str, amount_minor: int
) -> None:
    amount = RULES.amount(diamonds, currency)
    assert (amount.amount_minor, amount.currency) == (amount_minor, currency)
    worth_usd = diamonds * RULES.diamond_value_usd
    assert amount.units() * RULES.usd_per_unit[currency] <= worth_usd  # never more


def test_the_daily_limit_counts_us_cents_rounded_up() -> None:
    assert RULES.usd_minor(4_000) == 2000
    assert RULES.usd_minor(2_001) == 1001  # $10.005 counts as $10.01
