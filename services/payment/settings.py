from decimal import Decimal
from typing import ClassVar

from pydantic import Field

from shared.settings import ServiceSettings


class PaymentSettings(ServiceSettings):
    service_name: ClassVar[str] = "payment"
    default_http_port: ClassVar[int] = 8081

    daily_spend_cap_usd_minor: int = Field(default=250_000, ge=0)
    """At most this much (in US cents, other currencies converted) per user per UTC day."""
    purchases_per_hour: int = Field(default=20, ge=0)
    """At most this many purchases per user in any rolling hour."""
    usd_per_unit: dict[str, Decimal] = Field(
        default_factory=lambda: {"USD": Decimal(1), "EUR": Decimal("1.08")}
    )
    """Exchange rates for the daily cap: one unit of the currency in US dollars.
    A currency missing here is not accepted (`invalid_request`)."""

    provider_latency_ms: int = Field(default=0, ge=0)
    """Simulated provider round trip, so benchmarks can model a real card network."""
    provider_max_attempts: int = Field(default=4, ge=1)
    provider_retry_base_s: float = Field(default=0.05, gt=0)
