from decimal import Decimal
from typing import ClassVar

from pydantic import Field, field_validator

from shared.settings import ServiceSettings


class GiftingSettings(ServiceSettings):
    service_name: ClassVar[str] = "gifting"
    default_http_port: ClassVar[int] = 8083

    creator_share: Decimal = Decimal("0.5")
    """The share of a gift's coins the creator receives as diamonds (1 coin -> 0.5
    diamond). At most four decimals, so every gift converts exactly."""
    max_quantity: int = Field(default=1_000, ge=1)
    """The most gifts one request may send at once (a combo); more is `invalid_quantity`."""
    leaderboard_max_limit: int = Field(default=100, ge=1)

    @field_validator("creator_share")
    @classmethod
    def _exact_share(cls, share: Decimal) -> Decimal:
        if not Decimal(0) <= share <= Decimal(1):
            raise ValueError("creator_share must be between 0 and 1")
        if share != share.quantize(Decimal("0.0001")):
            raise ValueError("creator_share may have at most four decimals")
        return share
