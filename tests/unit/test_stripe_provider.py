"""The Stripe adapters without Stripe: amounts in Stripe's units, what each status and
error means, the record that fences reconciliation, and the settings.

stripe-mock (tests/integration/test_stripe_provider.py) cannot decline, time out,
answer 5xx or rate-limit; these fakes stand in for those answers."""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import stripe
from pydantic import ValidationError

from services.payment.errors import ProviderUnavailableError
from services.payment.provider import Charge
from services.payment.settings import PaymentSettings
from services.payment.stripe_provider import StripeCardProvider, verdict
from services.payout.errors import PayoutOutcomeUnknownError
from services.payout.provider import Transfer
from services.payout.settings import PayoutSettings
from services.payout.stripe_provider import StripeTransfers
from shared.money import Money
from shared.stripe_kit import (
    StripeConfigError,
    StripeSettings,
    UnsupportedAmountError,
    describe,
    to_stripe_amount,
)

# ─── amounts ──────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (499, "USD", (499, "usd")),
        (160, "JPY", (160, "jpy")),  # zero-decimal in both
        (5000, "UGX", (5000, "ugx")),  # zero-decimal in both
        (1000, "MGA", (10, "mga")),  # ISO 2 decimals, Stripe whole ariary
        (5, "ISK", (500, "isk")),  # ISO whole krónur, Stripe two decimals ending 00
        (1500, "KWD", (1500, "kwd")),  # three decimals in both, ending in 0
        (1234, "HUF", (1234, "huf")),  # two decimals for charges in both
    ],
)
def test_amounts_are_sent_in_stripes_units(amount: int, currency: str, expected: Any) -> None:
    assert to_stripe_amount(Money(amount_minor=amount, currency=currency)) == expected


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(1050, "MGA"), (1505, "KWD"), (0, "USD"), (-1, "USD"), (100, "ABC"), (100, "XAU")],
)
def test_an_amount_stripe_cannot_hold_exactly_is_refused_never_rounded(
    amount: int, currency: str
) -> None:
    with pytest.raises(UnsupportedAmountError):
        to_stripe_amount(Money(amount_minor=amount, currency=currency))


# ─── payment: statuses and errors ─────────────────────────────────────────────────────


def intent(status: str, *, failed: bool = False, id: str = "pi_1") -> stripe.PaymentIntent:
    error = {"type": "card_error", "code": "card_declined"} if failed else None
    return stripe.PaymentIntent.construct_from(
        {"id": id, "object": "payment_intent", "status": status, "last_payment_error": error},
        "sk_test_x",
    )


@pytest.mark.parametrize(
    ("status", "failed", "expected"),
    [
        ("succeeded", False, "approved"),
        ("requires_payment_method", True, "declined"),
        ("requires_action", False, "declined"),
        ("canceled", True, "declined"),
        ("canceled", False, "no_charge"),
        ("requires_confirmation", False, "no_charge"),
        ("processing", False, "unknown"),
        ("requires_capture", False, "unknown"),
        ("some_future_status", False, "unknown"),
    ],
)
def test_what_a_payment_intent_status_means(status: str, failed: bool, expected: str) -> None:
    assert verdict(intent(status, failed=failed)) == expected


def card_error() -> stripe.CardError:
    return stripe.CardError("Your card was declined.", None, "card_declined", http_status=402)


def invalid(code: str | None, param: str | None = None) -> stripe.InvalidRequestError:
    return stripe.InvalidRequestError("refused", param, code, http_status=400)


LOST = [
    stripe.APIConnectionError("timed out", should_retry=True),
    stripe.APIError("server error", http_status=500),
    stripe.APIError("conflict", http_status=409),  # the same key still in flight
    stripe.RateLimitError("too many requests", http_status=429),
    stripe.IdempotencyError("key reused with other parameters", http_status=400),
    stripe.AuthenticationError("invalid key", http_status=401),
]


class FakeIntents:
    """Stripe's PaymentIntents as scripted: each method answers its next item (an
    intent, or an error to raise) and records what it was asked."""

    def __init__(self, **answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Any, Any]] = []

    def _answer(self, method: str, params: Any, options: Any) -> Any:
        self.calls.append((method, params, options))
        answer = self.answers[method].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def create_async(self, params: Any, options: Any = None) -> Any:
        return self._answer("create", params, options)

    async def confirm_async(self, intent_id: str, params: Any = None, options: Any = None) -> Any:
        return self._answer("confirm", (intent_id, params), options)

    async def retrieve_async(self, intent_id: str, params: Any = None, options: Any = None) -> Any:
        return self._answer("retrieve", intent_id, options)

    async def cancel_async(self, intent_id: str, params: Any = None, options: Any = None) -> Any:
        return self._answer("cancel", (intent_id, params), options)

    def asked(self) -> list[str]:
        return [method for method, _, _ in self.calls]


class FakeRecords:
    """The `stripe_payment_intents` table, as the adapter uses it through its pool."""

    def __init__(self, rows: dict[str, str | None] | None = None) -> None:
        self.rows: dict[str, str | None] = dict(rows or {})

    async def fetchrow(self, _sql: str, key: str) -> dict[str, Any] | None:
        return {"payment_intent_id": self.rows[key]} if key in self.rows else None

    async def execute(self, _sql: str, key: str, intent_id: str | None) -> None:
        self.rows.setdefault(key, intent_id)

    async def fetchval(self, _sql: str, key: str) -> str | None:
        return self.rows[key]

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator["FakeRecords"]:
        yield self


def card_provider(
    intents: FakeIntents, records: FakeRecords | None = None
) -> tuple[StripeCardProvider, FakeRecords]:
    records = records or FakeRecords()
    client: Any = SimpleNamespace(v1=SimpleNamespace(payment_intents=intents))
    return StripeCardProvider(client, lambda: records), records  # type: ignore[arg-type,return-value]


USD = Money(amount_minor=499, currency="USD")


async def test_a_charge_creates_records_then_confirms_under_derived_keys() -> None:
    intents = FakeIntents(create=[intent("requires_confirmation")], confirm=[intent("succeeded")])
    provider, records = card_provider(intents)

    charge = await provider.charge(idempotency_key="req-1", method="pm_card_visa", amount=USD)

    assert charge == Charge("approved", "pi_1")
    assert records.rows == {"req-1": "pi_1"}
    (_, created, create_options), (_, (confirmed, params), confirm_options) = intents.calls
    assert created == {
        "amount": 499,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "allowed_payment_method_types": ["card"],
        "metadata": {"request_id": "req-1"},
    }
    assert "confirm" not in created  # creating moves no money: safe to repeat
    assert create_options == {"idempotency_key": "req-1"}
    assert (confirmed, params) == ("pi_1", {"error_on_requires_action": True})
    assert confirm_options == {"idempotency_key": "req-1:confirm"}


async def test_a_retried_charge_confirms_the_recorded_intent_without_creating_another() -> None:
    intents = FakeIntents(confirm=[intent("succeeded", id="pi_first")])
    provider, _ = card_provider(intents, FakeRecords({"req-1": "pi_first"}))

    charge = await provider.charge(idempotency_key="req-1", method="pm_card_visa", amount=USD)

    assert charge == Charge("approved", "pi_first")
    assert intents.asked() == ["confirm"]


async def test_a_card_error_is_a_decline_read_back_from_the_intent() -> None:
    intents = FakeIntents(
        create=[intent("requires_confirmation")],
        confirm=[card_error()],
        retrieve=[intent("requires_payment_method", failed=True)],
    )
    provider, _ = card_provider(intents)

    charge = await provider.charge(idempotency_key="req-1", method="pm_card_visa", amount=USD)

    assert charge == Charge("declined", "pi_1")


async def test_an_unknown_payment_method_is_declined_before_any_intent() -> None:
    intents = FakeIntents(create=[invalid("resource_missing", "payment_method")])
    provider, records = card_provider(intents)

    charge = await provider.charge(idempotency_key="req-1", method="pm_card_ok", amount=USD)

    assert charge.outcome == "declined"
    assert records.rows == {}


@pytest.mark.parametrize("error", LOST, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("step", ["create", "confirm"])
async def test_a_lost_or_untrustworthy_answer_leaves_the_charge_unknown(
    step: str, error: stripe.StripeError
) -> None:
    answers: dict[str, list[Any]] = {"create": [intent("requires_confirmation")]}
    answers[step] = [error]
    provider, _ = card_provider(FakeIntents(**answers))

    with pytest.raises(ProviderUnavailableError):
        await provider.charge(idempotency_key="req-1", method="pm_card_visa", amount=USD)


async def test_a_request_stripe_refuses_as_malformed_is_not_a_decline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug or a setting (here an amount below Stripe's minimum): never the buyer's
    decline; the purchase stays pending and reconciliation finds no charge."""
    provider, _ = card_provider(FakeIntents(create=[invalid("amount_too_small", "amount")]))

    with pytest.raises(ProviderUnavailableError):
        await provider.charge(idempotency_key="req-1", method="pm_card_visa", amount=USD)
    assert "amount_too_small" in caplog.text


async def test_an_amount_stripe_cannot_hold_is_never_sent() -> None:
    intents = FakeIntents()
    provider, _ = card_provider(intents)

    with pytest.raises(ProviderUnavailableError):
        await provider.charge(
            idempotency_key="req-1",
            method="pm_card_visa",
            amount=Money(amount_minor=1505, currency="KWD"),
        )
    assert intents.calls == []


@pytest.mark.parametrize("status", ["processing", "requires_capture"])
async def test_an_intent_still_moving_is_unknown(status: str) -> None:
    intents = FakeIntents(create=[intent("requires_confirmation")], confirm=[intent(status)])
    provider, _ = card_provider(intents)

    with pytest.raises(ProviderUnavailableError):
        await provider.charge(idempotency_key="req-1", method="pm_card_visa", amount=USD)


async def test_a_confirm_after_the_key_expired_reads_the_intent_as_it_is() -> None:
    intents = FakeIntents(
        confirm=[invalid("payment_intent_unexpected_state")], retrieve=[intent("succeeded")]
    )
    provider, _ = card_provider(intents, FakeRecords({"req-1": "pi_1"}))

    charge = await provider.charge(idempotency_key="req-1", method="pm_card_visa", amount=USD)

    assert charge == Charge("approved", "pi_1")


# ─── payment: lookup (reconciliation) ─────────────────────────────────────────────────


async def test_lookup_reads_the_recorded_intent_by_id() -> None:
    for status, failed, expected in [
        ("succeeded", False, Charge("approved", "pi_1")),
        ("requires_payment_method", True, Charge("declined", "pi_1")),
    ]:
        intents = FakeIntents(retrieve=[intent(status, failed=failed)])
        provider, _ = card_provider(intents, FakeRecords({"req-1": "pi_1"}))
        assert await provider.lookup(idempotency_key="req-1") == expected


async def test_no_record_means_no_charge_and_closes_the_key() -> None:
    intents = FakeIntents()
    provider, records = card_provider(intents)

    assert await provider.lookup(idempotency_key="req-1") is None
    assert records.rows == {"req-1": None}
    assert intents.calls == []  # nothing to ask: only a recorded intent is ever confirmed

    with pytest.raises(ProviderUnavailableError, match="closed by reconciliation"):
        await provider.charge(idempotency_key="req-1", method="pm_card_visa", amount=USD)
    assert intents.calls == []
    assert await provider.lookup(idempotency_key="req-1") is None


async def test_a_charge_still_on_its_way_when_reconciliation_closed_the_key_never_confirms() -> (
    None
):
    records = FakeRecords()
    provider: StripeCardProvider

    class Racing(FakeIntents):
        async def create_async(self, params: Any, options: Any = None) -> Any:
            # Reconciliation looks the key up while the create is in flight.
            assert await provider.lookup(idempotency_key="req-1") is None
            return await super().create_async(params, options)

    intents = Racing(create=[intent("requires_confirmation")])
    provider, _ = card_provider(intents, records)

    with pytest.raises(ProviderUnavailableError, match="closed by reconciliation"):
        await provider.charge(idempotency_key="req-1", method="pm_card_visa", amount=USD)
    assert intents.asked() == ["create"]  # the intent exists, unconfirmed: it charges nothing
    assert records.rows == {"req-1": None}


async def test_an_intent_never_confirmed_is_cancelled_then_no_charge() -> None:
    intents = FakeIntents(retrieve=[intent("requires_confirmation")], cancel=[intent("canceled")])
    provider, _ = card_provider(intents, FakeRecords({"req-1": "pi_1"}))

    assert await provider.lookup(idempotency_key="req-1") is None
    method, (cancelled, params), options = intents.calls[-1]
    assert (method, cancelled, params) == ("cancel", "pi_1", {"cancellation_reason": "abandoned"})
    assert options == {"idempotency_key": "req-1:cancel"}


async def test_a_confirm_that_beat_the_cancel_is_found() -> None:
    intents = FakeIntents(
        retrieve=[intent("requires_confirmation"), intent("succeeded")],
        cancel=[invalid("payment_intent_unexpected_state")],
    )
    provider, _ = card_provider(intents, FakeRecords({"req-1": "pi_1"}))

    assert await provider.lookup(idempotency_key="req-1") == Charge("approved", "pi_1")


@pytest.mark.parametrize("error", LOST, ids=lambda e: type(e).__name__)
async def test_lookup_that_cannot_ask_stripe_is_unknown_never_none(
    error: stripe.StripeError,
) -> None:
    provider, _ = card_provider(FakeIntents(retrieve=[error]), FakeRecords({"req-1": "pi_1"}))

    with pytest.raises(ProviderUnavailableError):
        await provider.lookup(idempotency_key="req-1")


async def test_lookup_of_an_intent_still_processing_is_unknown() -> None:
    intents = FakeIntents(retrieve=[intent("processing")])
    provider, _ = card_provider(intents, FakeRecords({"req-1": "pi_1"}))

    with pytest.raises(ProviderUnavailableError):
        await provider.lookup(idempotency_key="req-1")


# ─── payout ───────────────────────────────────────────────────────────────────────────


class FakeTransfers:
    def __init__(self, create: Any = None, listed: Any = ()) -> None:
        self.create, self.listed = create, listed
        self.calls: list[tuple[Any, Any]] = []

    async def create_async(self, params: Any, options: Any = None) -> Any:
        self.calls.append((params, options))
        if isinstance(self.create, Exception):
            raise self.create
        return self.create

    async def list_async(self, params: Any, options: Any = None) -> Any:
        self.calls.append((params, options))
        if isinstance(self.listed, Exception):
            raise self.listed
        return SimpleNamespace(data=list(self.listed))


def transfers(fake: FakeTransfers) -> StripeTransfers:
    client: Any = SimpleNamespace(v1=SimpleNamespace(transfers=fake))
    return StripeTransfers(client)


def transfer(id: str) -> stripe.Transfer:
    return stripe.Transfer.construct_from({"id": id, "object": "transfer"}, "sk_test_x")


async def test_a_payout_is_a_transfer_keyed_and_grouped_by_its_payout_id() -> None:
    fake = FakeTransfers(create=transfer("tr_1"))

    paid = await transfers(fake).pay(
        payout_id="po-1", method="acct_1", amount=Money(amount_minor=1000, currency="USD")
    )

    assert paid == Transfer("paid", "tr_1")
    assert fake.calls == [
        (
            {
                "amount": 1000,
                "currency": "usd",
                "destination": "acct_1",
                "transfer_group": "po-1",
                "metadata": {"payout_id": "po-1"},
            },
            {"idempotency_key": "po-1"},
        )
    ]


@pytest.mark.parametrize("code", ["balance_insufficient", "resource_missing", None])
async def test_a_transfer_stripe_refuses_is_rejected(code: str | None) -> None:
    fake = FakeTransfers(create=invalid(code, "destination"))

    refused = await transfers(fake).pay(
        payout_id="po-1", method="acct_1", amount=Money(amount_minor=1000, currency="USD")
    )

    assert refused.outcome == "rejected"
    assert refused.provider_reference == f"stripe_{code or 'invalid_request'}"


@pytest.mark.parametrize("error", LOST, ids=lambda e: type(e).__name__)
async def test_a_lost_transfer_answer_is_unknown(error: stripe.StripeError) -> None:
    with pytest.raises(PayoutOutcomeUnknownError):
        await transfers(FakeTransfers(create=error)).pay(
            payout_id="po-1", method="acct_1", amount=Money(amount_minor=1000, currency="USD")
        )


async def test_no_connected_account_or_no_exact_amount_is_rejected_without_asking() -> None:
    fake = FakeTransfers()
    usd = Money(amount_minor=1000, currency="USD")
    not_account = await transfers(fake).pay(payout_id="po-1", method="po_bank_ok", amount=usd)
    inexact = await transfers(fake).pay(
        payout_id="po-2", method="acct_1", amount=Money(amount_minor=1005, currency="KWD")
    )

    assert (not_account.outcome, inexact.outcome) == ("rejected", "rejected")
    assert fake.calls == []


async def test_status_lists_the_payouts_transfer_group() -> None:
    found = FakeTransfers(listed=[transfer("tr_new"), transfer("tr_old")])
    assert await transfers(found).status(payout_id="po-1") == Transfer("paid", "tr_old")
    assert found.calls == [({"transfer_group": "po-1", "limit": 10}, None)]
    assert await transfers(FakeTransfers(listed=[])).status(payout_id="po-1") is None
    with pytest.raises(PayoutOutcomeUnknownError):
        await transfers(FakeTransfers(listed=LOST[0])).status(payout_id="po-1")


def test_a_refused_key_is_never_quoted_in_an_error() -> None:
    refused = stripe.AuthenticationError(
        "Invalid API Key provided: sk_test_****cret", http_status=401
    )
    assert "sk_test" not in describe(refused)
    assert "card_declined" in describe(card_error())


# ─── settings ─────────────────────────────────────────────────────────────────────────


def test_the_simulated_providers_stay_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYMENT_PROVIDER", raising=False)
    monkeypatch.delenv("PAYOUT_PROVIDER", raising=False)
    assert PaymentSettings().payment_provider == "simulated"
    assert PayoutSettings().payout_provider == "simulated"


@pytest.mark.parametrize(
    ("cls", "variable"),
    [(PaymentSettings, "PAYMENT_PROVIDER"), (PayoutSettings, "PAYOUT_PROVIDER")],
)
def test_stripe_without_a_key_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, cls: type[Any], variable: str
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    monkeypatch.delenv("STRIPE_API_KEY_FILE", raising=False)
    monkeypatch.setenv(variable, "stripe")

    with pytest.raises(ValidationError, match=f"{variable}=stripe needs STRIPE_API_KEY"):
        cls()


def test_stripe_settings_come_from_the_environment_and_hide_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAYMENT_PROVIDER", "stripe")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_not_to_be_shown")
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:12111")
    monkeypatch.setenv("STRIPE_TIMEOUT_S", "5")

    settings = PaymentSettings()

    assert settings.stripe.api_base == "http://127.0.0.1:12111"
    assert settings.stripe.timeout_s == 5
    assert settings.stripe.key() == "sk_test_not_to_be_shown"
    assert "sk_test_not_to_be_shown" not in repr(settings)
    assert "sk_test_not_to_be_shown" not in str(settings.model_dump())


def test_the_key_may_come_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "stripe-key"
    key_file.write_text("sk_test_from_file\n")
    assert StripeSettings(api_key_file=key_file).key() == "sk_test_from_file"

    key_file.write_text("\n")
    with pytest.raises(StripeConfigError, match="empty"):
        StripeSettings(api_key_file=key_file).key()
    with pytest.raises(StripeConfigError, match="cannot read STRIPE_API_KEY_FILE"):
        StripeSettings(api_key_file=tmp_path / "missing").key()
