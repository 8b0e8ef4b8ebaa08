from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator

from shared.money import UsdRates, default_usd_rates
from shared.settings import ServiceSettings
from shared.stripe_kit import StripeSettings


class PaymentSettings(ServiceSettings):
    service_name: ClassVar[str] = "payment"
    default_http_port: ClassVar[int] = 8081

    daily_spend_cap_usd_minor: int = Field(default=250_000, ge=0)
    """At most this much (in US cents, other currencies converted) per user per UTC day."""
    purchases_per_hour: int = Field(default=20, ge=0)
    """At most this many purchases per user in any rolling hour."""
    usd_per_unit: UsdRates = Field(default_factory=default_usd_rates)
    """Exchange rates for the daily cap: one unit of the currency in US dollars.
    A currency missing here is not accepted (`invalid_request`)."""

    payment_provider: Literal["simulated", "stripe"] = "simulated"
    """The card provider: the simulated one of CONTRACT.md (the local stack's), or Stripe
    (`STRIPE_*` settings, shared/stripe_kit.py)."""
    # STRIPE_API_KEY or STRIPE_API_KEY_FILE, STRIPE_API_BASE, STRIPE_TIMEOUT_S, ...
    stripe: StripeSettings = Field(default_factory=StripeSettings)

    provider_latency_ms: int = Field(default=0, ge=0)
    """Simulated provider round trip, so benchmarks can model a real card network."""
    provider_max_attempts: int = Field(default=4, ge=1)
    provider_retry_base_s: float = Field(default=0.05, gt=0)
    reconcile_interval_s: float = Field(default=1.0, gt=0)
    """How often purchases whose charge outcome is unknown are looked up at the provider."""
    reconcile_after_s: float = Field(default=30.0, ge=0)
    """A purchase still pending this long after it was last charged is looked up. Must be
    longer than a whole charge (every attempt, its timeout and backoff): a lookup that
    finds no charge fails the purchase, so no charge call may still be under way."""

    chargeback_webhook_secret: SecretStr | None = Field(default=None, repr=False)
    """The HMAC key the card provider signs chargeback notices with. Without it (or its
    file) `POST /v1/webhooks/chargebacks` answers 503: never accepts unsigned notices."""
    chargeback_webhook_secret_file: Path | None = None
    """A file holding that key, so it never sits in an environment (read at start-up)."""

    def chargeback_webhook_key(self) -> bytes | None:
        """The webhook's HMAC key, from the setting or else its file; None when neither."""
        if self.chargeback_webhook_secret is not None:
            key = self.chargeback_webhook_secret.get_secret_value()
        elif self.chargeback_webhook_secret_file is not None:
            try:
                key = self.chargeback_webhook_secret_file.read_text().strip()
            except OSError as error:
                raise ValueError(
                    f"cannot read CHARGEBACK_WEBHOOK_SECRET_FILE "
                    f"{self.chargeback_webhook_secret_file}: {error.strerror}"
                ) from None
        else:
            return None
        if not key:
            raise ValueError("the chargeback webhook secret is empty")  # an HMAC with no key
        return key.encode()

    @model_validator(mode="after")
    def _provider_configured(self) -> "PaymentSettings":
        if self.payment_provider == "stripe" and not self.stripe.configured:
            raise ValueError("PAYMENT_PROVIDER=stripe needs STRIPE_API_KEY or STRIPE_API_KEY_FILE")
        return self
