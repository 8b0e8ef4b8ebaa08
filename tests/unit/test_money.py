"""Money in every currency's own minor unit (ISO 4217 through the iso4217 package)."""

from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from shared.money import Money, UsdRates, default_usd_rates, is_money_currency, minor_unit_exponent


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3), ("CLF", 4)],
)
def test_the_minor_unit_comes_from_iso_4217(currency: str, exponent: int) -> None:
    assert minor_unit_exponent(currency) == exponent


@pytest.mark.parametrize("code", ["ZZZ", "XAU", "XXX", "usd"])
def test_a_code_without_a_minor_unit_is_not_money(code: str) -> None:
    with pytest.raises(ValueError, match=code):
        minor_unit_exponent(code)
    assert not is_money_currency(code)


@pytest.mark.parametrize(
    ("money", "units", "text"),
    [
        (Money(amount_minor=499, currency="USD"), Decimal("4.99"), "4.99 USD"),
        (Money(amount_minor=500, currency="JPY"), Decimal(500), "500 JPY"),
        (Money(amount_minor=1500, currency="KWD"), Decimal("1.5"), "1.500 KWD"),
    ],
)
def test_an_amount_reads_in_its_own_currency(money: Money, units: Decimal, text: str) -> None:
    assert money.units() == units
    assert str(money) == text


@pytest.mark.parametrize(
    ("units", "currency", "down", "up"),
    [
        (Decimal("2985.074626"), "JPY", 2985, 2986),
        (Decimal("18.518518"), "EUR", 1851, 1852),
        (Decimal("6.1349693"), "KWD", 6134, 6135),
        (Decimal("4.99"), "USD", 499, 499),  # exact: no rounding either way
        (Decimal(7), "JPY", 7, 7),
    ],
)
def test_units_round_down_or_up_to_the_minor_unit(
    units: Decimal, currency: str, down: int, up: int
) -> None:
    assert Money.of_units(units, currency, rounding="down").amount_minor == down
    assert Money.of_units(units, currency, rounding="up").amount_minor == up


class _Rates(BaseModel):
    rates: UsdRates


def test_rates_name_iso_currencies_with_positive_values() -> None:
    assert _Rates(rates=default_usd_rates()).rates["JPY"] == Decimal("0.0067")
    with pytest.raises(ValidationError, match="XAU"):
        _Rates(rates={"XAU": Decimal(2000)})
    with pytest.raises(ValidationError, match="ABC"):
        _Rates(rates={"ABC": Decimal(1)})
    with pytest.raises(ValidationError, match="more than 0"):
        _Rates(rates={"JPY": Decimal(0)})


def test_a_service_with_a_rate_for_no_real_currency_refuses_to_start() -> None:
    from services.payment.settings import PaymentSettings
    from services.payout.settings import PayoutSettings

    for settings in (PaymentSettings, PayoutSettings):
        with pytest.raises(ValidationError, match="XAU"):
            settings(usd_per_unit={"USD": Decimal(1), "XAU": Decimal(2000)})
