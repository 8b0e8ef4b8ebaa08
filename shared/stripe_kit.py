"""What the Stripe adapters of payment and payout share: settings, the API client,
amounts in Stripe's units, and which errors leave an outcome unknown.

Settings (`STRIPE_*` environment variables): `STRIPE_API_KEY`, or
`STRIPE_API_KEY_FILE` naming a file that holds it (preferred: it keeps the key out of
the environment); `STRIPE_API_BASE` (Stripe's API by default; stripe-mock's address in
tests); `STRIPE_TIMEOUT_S` per HTTP request and `STRIPE_MAX_NETWORK_RETRIES`, the
Stripe library's own retries of a request that got no answer (same idempotency key).
The key is a `SecretStr`: it never appears in a repr, a log line or an error. A
service set to use Stripe without a key refuses to start.

The client is a `stripe.StripeClient` of its own (no global `stripe.api_key`) on the
library's httpx transport, so every call is async (`*_async` methods).
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import stripe
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette

from shared.money import Money, minor_unit_exponent

STRIPE_API: str = "https://api.stripe.com"


class StripeConfigError(ValueError):
    """Settings that cannot reach Stripe: no key, an empty or unreadable key file."""


class StripeSettings(BaseSettings):
    """How a service talks to Stripe (`STRIPE_*` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="STRIPE_", extra="ignore", frozen=True)

    api_key: SecretStr | None = Field(default=None, repr=False)
    """The secret key (`sk_live_…`, `sk_test_…`, or a restricted `rk_…` key)."""
    api_key_file: Path | None = None
    """A file holding the key, so it never sits in an environment (read at start-up)."""
    api_base: str = STRIPE_API
    """Where the API is: Stripe's, or a stripe-mock for tests."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for one HTTP answer; a timeout leaves the outcome unknown."""
    max_network_retries: int = Field(default=2, ge=0)
    """The library's retries of a request that got no usable answer (a connection
    error, a 409 conflict, a 5xx, a rate limit): always under the same idempotency key."""

    @property
    def configured(self) -> bool:
        """Whether a key is given (its file is only read by `key`)."""
        return self.api_key is not None or self.api_key_file is not None

    def key(self) -> str:
        """The API key, from the setting or else its file; StripeConfigError when neither
        gives a non-empty key."""
        if self.api_key is not None:
            key = self.api_key.get_secret_value().strip()
        elif self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as error:
                raise StripeConfigError(
                    f"cannot read STRIPE_API_KEY_FILE {self.api_key_file}: {error.strerror}"
                ) from None
        else:
            raise StripeConfigError("Stripe needs STRIPE_API_KEY or STRIPE_API_KEY_FILE")
        if not key:
            raise StripeConfigError("the Stripe API key is empty")
        return key


def make_client(
    settings: StripeSettings, *, http_client: stripe.HTTPXClient | None = None
) -> stripe.StripeClient:
    """A Stripe client of its own with the settings' key, address, timeout and retries.

    `http_client` replaces the default httpx transport (tests record requests with it).
    Close the transport when done: `close_with(app, client_transport.close_async)`.
    """
    return stripe.StripeClient(
        settings.key(),
        base_addresses={"api": settings.api_base.rstrip("/")},
        max_network_retries=settings.max_network_retries,
        http_client=http_client or stripe.HTTPXClient(timeout=settings.timeout_s),
    )


def close_with(app: Starlette, close: Callable[[], Awaitable[None]]) -> Starlette:
    """Run `close` after the app's lifespan ended (consumers stopped): the Stripe
    client's connections outlive every call a handler may still make."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with inner(app):
                yield
        finally:
            await close()

    app.router.lifespan_context = lifespan
    return app


# Stripe's units for amounts (docs.stripe.com/currencies, "Minor units in API amounts",
# "Zero-decimal currencies" and "Special cases"). Stripe mostly counts ISO 4217 minor
# units, but not always:
STRIPE_ZERO_DECIMAL: frozenset[str] = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()  # noqa: SIM905
)
"""Counted in whole units. MGA differs from ISO 4217 (exponent 2); the others agree
(UGX too: zero-decimal in both)."""
STRIPE_THREE_DECIMAL: frozenset[str] = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
"""Three decimals, as in ISO 4217, but Stripe's partners need the last digit to be 0."""
STRIPE_WHOLE_UNITS_AS_TWO_DECIMALS: frozenset[str] = frozenset({"ISK"})
"""ISK: zero-decimal in ISO 4217, kept two-decimal in Stripe's API for backwards
compatibility, so 5 ISK is sent as 500 (and must be a multiple of 100)."""
# Not converted: HUF and TWD are two-decimal for charges in both; Stripe's rule that
# they be whole units applies to Stripe Payouts to a bank, which coinstream does not
# make (a payout here is a transfer to the creator's connected account).


class UnsupportedAmountError(ValueError):
    """An amount Stripe cannot be sent exactly (a fraction of its unit, an unknown or
    non-money currency): nothing is sent."""


def stripe_exponent(currency: str) -> int:
    """How many decimal places Stripe's `amount` has for this currency."""
    if currency in STRIPE_ZERO_DECIMAL:
        return 0
    if currency in STRIPE_THREE_DECIMAL:
        return 3
    return 2


def to_stripe_amount(money: Money) -> tuple[int, str]:
    """`money` as Stripe's (amount, currency): the amount in Stripe's unit, the ISO code
    in lower case. Exact or refused: an amount Stripe's unit cannot hold (a fraction
    of an ariary, a KWD amount not ending in 0) raises UnsupportedAmountError, never rounds.
    """
    try:
        iso = minor_unit_exponent(money.currency)
    except ValueError as error:
        raise UnsupportedAmountError(str(error)) from None
    if money.amount_minor <= 0:
        raise UnsupportedAmountError(
            f"{money.amount_minor} {money.currency}: not a positive amount"
        )
    shift = stripe_exponent(money.currency) - iso
    if shift >= 0:
        amount = money.amount_minor * 10**shift
    else:
        amount, rest = divmod(money.amount_minor, 10**-shift)
        if rest:
            raise UnsupportedAmountError(
                f"{money.amount_minor} {money.currency} (ISO minor units) is not a whole "
                f"number of Stripe's units for {money.currency}"
            )
    if money.currency in STRIPE_THREE_DECIMAL and amount % 10:
        raise UnsupportedAmountError(
            f"{money.currency} amounts must end in 0 at Stripe, not {amount}"
        )
    if money.currency in STRIPE_WHOLE_UNITS_AS_TWO_DECIMALS and amount % 100:
        raise UnsupportedAmountError(f"{money.currency} is charged in whole units at Stripe")
    return amount, money.currency.lower()


def answer_lost(error: stripe.StripeError) -> bool:
    """Whether a Stripe error leaves the outcome of a call unknown: no answer (a
    connection error or timeout), a 5xx, a rate limit, a 409 (the same idempotency key
    still in flight), or an idempotency key reused with other parameters (the first
    call under it may have moved money). Keys that Stripe refuses (401, 403) count as
    unknown too: a configuration problem must not turn into a final refusal."""
    return isinstance(
        error,
        stripe.APIConnectionError
        | stripe.APIError
        | stripe.RateLimitError
        | stripe.IdempotencyError
        | stripe.AuthenticationError
        | stripe.PermissionError,
    )


def describe(error: stripe.StripeError) -> str:
    """A log line's account of a Stripe error. A refused key's message is left out: Stripe
    quotes part of the key in it."""
    code = getattr(error, "code", None) or type(error).__name__
    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        message = "Stripe refused the API key (check STRIPE_API_KEY and its permissions)"
    else:
        message = str(error.user_message)
    return f"{code} (HTTP {error.http_status}, request {error.request_id}): {message}"
