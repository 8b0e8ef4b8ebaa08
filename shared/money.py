"""Money and diamonds: integers and exact decimals only, never floats.

An amount of money is an integer count of its currency's minor unit, and how many
decimal places that unit is (USD 2, JPY 0, KWD 3) comes from ISO 4217 through the
maintained `iso4217` package, never from a table of our own: an operator who adds a
currency gets its real minor unit.
"""

import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Annotated, Any, Literal

import iso4217
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

_DECIMAL_TEXT = re.compile(r"^\d+(\.\d+)?$")


class Money(BaseModel):
    """An amount of real money in the minor unit of its ISO 4217 currency, whose number of
    decimal places ISO 4217 sets: `499 USD` = $4.99, `160 JPY` = ¥160, `1500 KWD` =
    1.500 KWD."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    amount_minor: int
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]

    def __str__(self) -> str:
        places = minor_unit_exponent(self.currency)
        return f"{self.units():.{places}f} {self.currency}"

    def units(self) -> Decimal:
        """The amount in whole units of its currency, exactly (`499 USD` -> 4.99)."""
        return Decimal(self.amount_minor).scaleb(-minor_unit_exponent(self.currency))

    @classmethod
    def of_units(cls, units: Decimal, currency: str, *, rounding: Literal["down", "up"]) -> "Money":
        """`units` whole units of `currency` in its minor unit, rounded `down` (never
        more than `units`: what is paid out) or `up` (never less: what a limit counts)."""
        minor = units.scaleb(minor_unit_exponent(currency))
        mode = ROUND_FLOOR if rounding == "down" else ROUND_CEILING
        return cls(amount_minor=int(minor.to_integral_value(mode)), currency=currency)


def minor_unit_exponent(currency: str) -> int:
    """How many decimal places `currency`'s minor unit is (ISO 4217: USD 2, JPY 0, KWD 3).

    Raises ValueError for a code ISO 4217 does not list, or one without a minor unit
    (gold, SDRs, test codes): such a currency cannot be priced in integers."""
    try:
        exponent = iso4217.Currency(currency).exponent
    except ValueError:
        raise ValueError(f"{currency!r} is not an ISO 4217 currency") from None
    if exponent is None:
        raise ValueError(f"{currency} has no minor unit in ISO 4217; it cannot be money here")
    return exponent


def is_money_currency(currency: str) -> bool:
    """Whether `currency` is an ISO 4217 currency with a minor unit."""
    try:
        minor_unit_exponent(currency)
    except ValueError:
        return False
    return True


def _check_rates(rates: Mapping[str, Decimal]) -> Mapping[str, Decimal]:
    for currency, rate in rates.items():
        minor_unit_exponent(currency)  # raises, naming the code, when it is not money
        if rate <= 0:
            raise ValueError(f"{currency}: one unit must be worth more than 0 USD, not {rate}")
    return rates


UsdRates = Annotated[dict[str, Decimal], AfterValidator(_check_rates)]
"""Exchange rates: what one whole unit of each currency is worth in US dollars. Every
key must be an ISO 4217 currency with a minor unit; a rate must be positive."""


def default_usd_rates() -> dict[str, Decimal]:
    """The local stack's rates (USD, EUR and JPY): an operator sets real ones."""
    return {"USD": Decimal(1), "EUR": Decimal("1.08"), "JPY": Decimal("0.0067")}


def _parse_diamonds(value: Any) -> Decimal:
    # The contract: an integer, or a decimal string when there is a fraction. A float
    # would already have lost exactness, so it is refused rather than rounded.
    if isinstance(value, bool):
        raise ValueError("diamonds must be an integer or a decimal string")
    if isinstance(value, int) and value >= 0:
        return Decimal(value)
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str) and _DECIMAL_TEXT.match(value):
        return Decimal(value)
    raise ValueError("diamonds must be an integer or a decimal string")


def format_diamonds(value: Decimal) -> int | str:
    """The wire form of a diamond amount: an int when whole, else a decimal string."""
    if value == value.to_integral_value():
        return int(value)
    return format(value.normalize(), "f")


Diamonds = Annotated[
    Decimal,
    PlainValidator(_parse_diamonds),
    PlainSerializer(format_diamonds, return_type=int | str),
]
"""An exact, non-float diamond amount (`1`, `"0.5"`)."""
