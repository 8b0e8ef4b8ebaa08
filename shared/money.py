"""Money and diamonds: integers and exact decimals only, never floats."""

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

_DECIMAL_TEXT = re.compile(r"^\d+(\.\d+)?$")


class Money(BaseModel):
    """An amount of real money in minor units of an ISO 4217 currency (`499 USD` = $4.99)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    amount_minor: int
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]

    def __str__(self) -> str:
        return f"{Decimal(self.amount_minor).scaleb(-2):.2f} {self.currency}"


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
