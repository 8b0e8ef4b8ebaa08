"""The Stripe adapters against stripe-mock, and payment and payout running with them
against real Kafka and PostgreSQL.

What this proves: every request the adapters make is one Stripe's API accepts (stripe-mock
checks paths, parameters and types against Stripe's OpenAPI description of the pinned
version), carries the idempotency key we mean (recorded at the HTTP layer), and its
answer is parsed and mapped to an outcome the services settle; a Stripe that cannot be
reached leaves the outcome unknown.

What it cannot prove: stripe-mock keeps no state and answers fixtures, so it cannot
decline a card, remember an idempotency key, refuse a transfer or find a PaymentIntent
made before. Declines, 5xx, 409, rate limits and refusals are unit-tested with fakes
(tests/unit/test_stripe_provider.py); Stripe's test mode is the place to try the real
thing (docs/operations.md, "Stripe").
"""

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
import stripe

from devstack import Endpoints
from services.payment.errors import ProviderUnavailableError
from services.payment.main import create_app as create_payment
from services.payment.provider import Charge
from services.payment.settings import PaymentSettings
from services.payment.stripe_provider import StripeCardProvider
from services.payout.errors import PayoutOutcomeUnknownError
from services.payout.main import create_app as create_payout
from services.payout.settings import PayoutSettings
from services.payout.stripe_provider import StripeTransfers
from services.wallet.main import create_app as create_wallet
from services.wallet.settings import WalletSettings
from shared import topics
from shared.db import Database
from shared.money import Money
from shared.stripe_kit import StripeSettings, make_client
from tests import stripe_mock
from tests.integration.wallet_support import give_diamonds
from tests.support import (
    TopicReader,
    eventually,
    free_port,
    in_process,
    publish,
    purchase_request,
    unique,
)

pytestmark = [
    pytest.mark.integration,
    # The Stripe library (16.1.0) hands httpx its form body as `data=<str>`, which httpx
    # 0.28 deprecates in favour of `content=`; harmless, and not ours to change.
    pytest.mark.filterwarnings(
        "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
    ),
]


@pytest.fixture(scope="module")
def stripe_api() -> Iterator[str]:
    """stripe-mock whose PaymentIntents succeed (tests/stripe_mock_fixtures.json)."""
    with stripe_mock.running(stripe_mock.SUCCEEDING_FIXTURES) as url:
        yield url


@pytest.fixture(scope="module")
def stripe_api_declining() -> Iterator[str]:
    """stripe-mock with Stripe's own fixtures: a PaymentIntent after a failed attempt."""
    with stripe_mock.running() as url:
        yield url


class Recorded(stripe.HTTPXClient):
    """The Stripe library's own httpx transport, recording what it sends."""

    def __init__(self) -> None:
        super().__init__(timeout=10)
        self.sent: list[tuple[str, str, dict[str, str], dict[str, list[str]]]] = []

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> Any:
        body = parse_qs(post_data.decode() if isinstance(post_data, bytes) else post_data or "")
        self.sent.append((method.upper(), url, {k.lower(): v for k, v in headers.items()}, body))
        return await super().request_async(method, url, headers, post_data)

    def requests(self, path_part: str) -> list[tuple[str, str, dict[str, str], Any]]:
        return [(m, urlsplit(u).path, h, b) for m, u, h, b in self.sent if path_part in u]


def settings_for(url: str, **overrides: Any) -> StripeSettings:
    values: dict[str, Any] = {"api_key": stripe_mock.TEST_KEY, "api_base": url, **overrides}
    return StripeSettings(**values)


@pytest.fixture
async def recorded() -> AsyncIterator[Recorded]:
    http = Recorded()
    yield http
    await http.close_async()


@pytest.fixture(scope="module")
async def payment_db(database: Endpoints) -> AsyncIterator[Database]:
    """The payment schema as the payment service's role, where the adapter records."""
    db = Database(database.database("payment"), schema="payment", min_size=1, max_size=4)
    await db.open()
    yield db
    await db.pool.close()


def card_provider(url: str, http: stripe.HTTPXClient, db: Database) -> StripeCardProvider:
    return StripeCardProvider(make_client(settings_for(url), http_client=http), lambda: db.pool)


USD = Money(amount_minor=499, currency="USD")


async def test_a_charge_sends_valid_requests_under_its_idempotency_keys(
    stripe_api: str, recorded: Recorded, payment_db: Database
) -> None:
    provider = card_provider(stripe_api, recorded, payment_db)
    key = unique("req")

    charge = await provider.charge(idempotency_key=key, method="pm_card_visa", amount=USD)

    assert charge.outcome == "approved" and charge.provider_reference.startswith("pi_")
    (create, confirm) = recorded.sent
    assert (create[0], urlsplit(create[1]).path) == ("POST", "/v1/payment_intents")
    assert create[2]["idempotency-key"] == key
    assert create[3] == {
        "amount": ["499"],
        "currency": ["usd"],
        "payment_method": ["pm_card_visa"],
        "allowed_payment_method_types[0]": ["card"],
        "metadata[request_id]": [key],
    }
    assert urlsplit(confirm[1]).path == f"/v1/payment_intents/{charge.provider_reference}/confirm"
    assert confirm[2]["idempotency-key"] == f"{key}:confirm"
    assert confirm[3] == {"error_on_requires_action": ["true"]}
    assert create[2]["authorization"] == f"Bearer {stripe_mock.TEST_KEY}"

    # Reconciliation reads the recorded intent back by id, and nothing else.
    assert await provider.lookup(idempotency_key=key) == charge
    (_, path, _, _) = recorded.requests("/v1/payment_intents")[-1]
    assert path == f"/v1/payment_intents/{charge.provider_reference}"


async def test_a_charge_stripe_answers_with_a_failed_attempt_is_declined(
    stripe_api_declining: str, recorded: Recorded, payment_db: Database
) -> None:
    provider = card_provider(stripe_api_declining, recorded, payment_db)
    key = unique("req")

    charge = await provider.charge(idempotency_key=key, method="pm_card_visa", amount=USD)

    assert charge == Charge("declined", charge.provider_reference)
    assert await provider.lookup(idempotency_key=key) == charge


async def test_a_key_never_charged_is_no_charge_without_asking_stripe(
    stripe_api: str, recorded: Recorded, payment_db: Database, database_url: str
) -> None:
    provider = card_provider(stripe_api, recorded, payment_db)
    key = unique("req")

    assert await provider.lookup(idempotency_key=key) is None
    assert recorded.sent == []
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT payment_intent_id FROM payment.stripe_payment_intents WHERE request_id = $1",
            key,
        )
    finally:
        await conn.close()
    assert row is not None and row["payment_intent_id"] is None  # closed: never confirmed


async def test_a_stripe_that_cannot_be_reached_leaves_outcomes_unknown(
    payment_db: Database,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    http = stripe.HTTPXClient(timeout=2)
    try:
        client = make_client(settings_for(closed, max_network_retries=0), http_client=http)
        provider = StripeCardProvider(client, lambda: payment_db.pool)
        with pytest.raises(ProviderUnavailableError):
            await provider.charge(idempotency_key=unique("req"), method="pm_card_visa", amount=USD)
        with pytest.raises(PayoutOutcomeUnknownError):
            await StripeTransfers(client).pay(
                payout_id=unique("po"),
                method="acct_1",
                amount=Money(amount_minor=1000, currency="USD"),
            )
        with pytest.raises(PayoutOutcomeUnknownError):
            await StripeTransfers(client).status(payout_id=unique("po"))
    finally:
        await http.close_async()


async def test_a_payout_is_a_transfer_under_its_payout_id(
    stripe_api: str, recorded: Recorded
) -> None:
    bank = StripeTransfers(make_client(settings_for(stripe_api), http_client=recorded))
    payout_id = unique("po")

    paid = await bank.pay(
        payout_id=payout_id, method="acct_1Creator", amount=Money(amount_minor=1000, currency="EUR")
    )
    found = await bank.status(payout_id=payout_id)

    assert paid.outcome == "paid" and paid.provider_reference.startswith("tr_")
    assert found is not None and found.outcome == "paid"  # stripe-mock lists its fixture
    (create, listing) = recorded.sent
    assert create[2]["idempotency-key"] == payout_id
    assert create[3] == {
        "amount": ["1000"],
        "currency": ["eur"],
        "destination": ["acct_1Creator"],
        "transfer_group": [payout_id],
        "metadata[payout_id]": [payout_id],
    }
    assert listing[0] == "GET"
    assert parse_qs(urlsplit(listing[1]).query) == {"transfer_group": [payout_id], "limit": ["10"]}


# ─── the services with PAYMENT_PROVIDER=stripe / PAYOUT_PROVIDER=stripe ───────────────


async def test_the_payment_service_on_stripe_completes_a_purchase_once(
    service_settings: Callable[..., Any], operator_token: str, infra: Any, stripe_api: str
) -> None:
    http = Recorded()
    settings = service_settings(
        PaymentSettings,
        payment_provider="stripe",
        stripe=settings_for(stripe_api),
        provider_retry_base_s=0.01,
        reconcile_after_s=1.0,
        reconcile_interval_s=0.2,
    )
    user = unique("user")
    request = purchase_request(
        user_id=user, package_id="coins_350", amount=499, method="pm_card_visa"
    )
    app = create_payment(settings, stripe_http=http)
    async with (
        in_process(app, token=operator_token) as payment,
        TopicReader(infra, (topics.PURCHASE_COMPLETED, topics.PURCHASE_FAILED)) as reader,
    ):
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, request), (user, request)])
        (completed,) = await reader.wait_for(topics.PURCHASE_COMPLETED, user_id=user)
        status = (await payment.get(f"/v1/purchases/{request['request_id']}")).json()

    assert completed["request_id"] == request["request_id"] and completed["coins"] == 350
    assert (status["status"], status["payment_id"]) == ("completed", completed["payment_id"])
    assert reader.matching(topics.PURCHASE_FAILED, user_id=user) == []
    # Only this request's calls: the session's consumer group may still hold requests
    # other tests left unconsumed, which this service charges too.
    rid = request["request_id"]
    keys = [h["idempotency-key"] for _, _, h, _ in http.requests("/v1/payment_intents")]
    assert [k for k in keys if k.split(":")[0] == rid] == [rid, f"{rid}:confirm"]  # once


async def test_the_payout_service_on_stripe_pays_a_creator_by_transfer(
    service_settings: Callable[..., Any],
    operator_token: str,
    infra: Any,
    database_url: str,
    stripe_api: str,
) -> None:
    http = Recorded()
    payout_app = create_payout(
        service_settings(
            PayoutSettings,
            payout_provider="stripe",
            stripe=settings_for(stripe_api),
            reconcile_interval_s=0.2,
        ),
        stripe_http=http,
    )
    wallet_app = create_wallet(service_settings(WalletSettings))
    creator = unique("creator")
    await give_diamonds(database_url, creator, 4_000)
    request = {
        "request_id": unique("payout"),
        "creator_id": creator,
        "diamonds": 2_000,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    async with (
        in_process(wallet_app, token=operator_token),
        in_process(payout_app, token=operator_token),
        TopicReader(infra, (topics.PAYOUT_COMPLETED, topics.PAYOUT_FAILED)) as reader,
    ):
        update = {
            "creator_id": creator,
            "verified": True,
            "payout_method": "acct_1Creator",
            "currency": "USD",
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        await publish(infra, topics.CREATOR_UPDATED, [(creator, update)])
        await eventually(lambda: _known_creator(database_url, creator))
        await publish(infra, topics.PAYOUT_REQUESTED, [(creator, request)])
        (completed,) = await reader.wait_for(topics.PAYOUT_COMPLETED, creator_id=creator)

    assert completed["amount"] == {"amount_minor": 1000, "currency": "USD"}
    ours = [
        body
        for _, _, headers, body in http.requests("/v1/transfers")
        if headers["idempotency-key"] == completed["payout_id"]
    ]
    (body,) = ours  # one transfer for this payout (others' leftovers aside)
    assert body["destination"] == ["acct_1Creator"] and body["amount"] == ["1000"]


async def _known_creator(database_url: str, creator_id: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        found = await conn.fetchval(
            "SELECT 1 FROM payout.creators WHERE creator_id = $1", creator_id
        )
    finally:
        await conn.close()
    return bool(found)
