from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from shared.money import UsdRates, default_usd_rates
from shared.settings import ServiceSettings
from shared.stripe_kit import StripeSettings


class PayoutSettings(ServiceSettings):
    service_name: ClassVar[str] = "payout"
    default_http_port: ClassVar[int] = 8084

    min_payout_diamonds: int = Field(default=2_000, ge=1)
    """The smallest cash-out (2,000 diamonds = $10); less is `below_minimum`."""
    daily_limit_usd_minor: int = Field(default=100_000, ge=0)
    """At most this much (US cents) paid out to one creator per UTC day."""
    diamond_value_usd: Decimal = Decimal("0.005")
    """What one diamond is worth in US dollars (200 diamonds = $1)."""
    usd_per_unit: UsdRates = Field(default_factory=default_usd_rates)
    """One unit of a payout currency in US dollars; a creator's currency must be here."""
    hold_timeout_s: float = Field(default=3_600, gt=0)
    """A payout's hold must be settled within this; the wallet audit names late ones."""
    reconcile_interval_s: float = Field(default=1.0, gt=0)
    """How often payouts with an unknown provider outcome are looked up."""
    reconcile_after_s: float = Field(default=30.0, ge=0)
    """A payout still being paid after this long (its process died mid-call) is reconciled."""
    provider_latency_ms: int = Field(default=0, ge=0)
    payout_provider: Literal["simulated", "stripe"] = "simulated"
    """The payout provider: the simulated bank of CONTRACT.md (the local stack's), or
    Stripe transfers to creators' connected accounts (`STRIPE_*` settings)."""
    # STRIPE_API_KEY or STRIPE_API_KEY_FILE, STRIPE_API_BASE, STRIPE_TIMEOUT_S, ...
    stripe: StripeSettings = Field(default_factory=StripeSettings)

    @model_validator(mode="after")
    def _provider_configured(self) -> "PayoutSettings":
        if self.payout_provider == "stripe" and not self.stripe.configured:
            raise ValueError("PAYOUT_PROVIDER=stripe needs STRIPE_API_KEY or STRIPE_API_KEY_FILE")
        return self
