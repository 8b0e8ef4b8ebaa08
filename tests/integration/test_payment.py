"""The payment service against real Kafka and PostgreSQL: outcomes and idempotency."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from services.payment.main import create_app
from services.payment.settings import PaymentSettings
from shared import topics
from tests.support import TopicReader, in_process, publish, purchase_request, unique

pytestmark = pytest.mark.integration


@pytest.fixture
async def payment(service_settings: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(create_app(service_settings(PaymentSettings))) as client:
        yield client


async def test_each_request_has_exactly_one_outcome_even_when_sent_twice(
    payment: httpx.AsyncClient, infra: Any
) -> None:
    user = unique("user")
    ok = purchase_request(user_id=user, package_id="coins_350", amount=499)
    unknown = purchase_request(user_id=user, package_id="coins_71")
    mismatch = purchase_request(user_id=user, amount=98)
    declined = purchase_request(user_id=user, method="pm_card_declined")
    negative = purchase_request(user_id=user, amount=-99)
    sentinel = purchase_request(user_id=user)
    sent = [ok, ok, unknown, mismatch, declined, negative, ok, sentinel]
    outcome_topics = (topics.PURCHASE_COMPLETED, topics.PURCHASE_FAILED)
    async with TopicReader(infra.kafka_bootstrap, outcome_topics) as reader:
        await publish(infra.kafka_bootstrap, topics.PURCHASE_REQUESTED, [(user, r) for r in sent])
        await reader.wait_for(topics.PURCHASE_COMPLETED, request_id=sentinel["request_id"])
        await reader.wait_for(topics.PURCHASE_FAILED, count=4, user_id=user)  # another topic
        completed = reader.matching(topics.PURCHASE_COMPLETED, user_id=user)
        failed = reader.matching(topics.PURCHASE_FAILED, user_id=user)

    assert [(c["request_id"], c["coins"], c["bonus_coins"]) for c in completed] == [
        (ok["request_id"], 350, 0),
        (sentinel["request_id"], 70, 0),
    ]
    assert completed[0]["price"] == {"amount_minor": 499, "currency": "USD"}
    assert {f["request_id"]: f["reason"] for f in failed} == {
        unknown["request_id"]: "unknown_package",
        mismatch["request_id"]: "price_mismatch",
        declined["request_id"]: "payment_declined",
        negative["request_id"]: "invalid_request",
    }
    for event in completed + failed:
        assert event["event_id"] and event["occurred_at"]

    status = (await payment.get(f"/v1/purchases/{ok['request_id']}")).json()
    assert status["status"] == "completed"
    assert status["payment_id"] == completed[0]["payment_id"]
    refused = (await payment.get(f"/v1/purchases/{mismatch['request_id']}")).json()
    assert (refused["status"], refused["reason"]) == ("failed", "price_mismatch")
    missing = await payment.get("/v1/purchases/never-sent")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


async def test_the_catalog_lists_packages_per_currency(payment: httpx.AsyncClient) -> None:
    usd = (await payment.get("/v1/packages")).json()["packages"]
    assert [(p["package_id"], p["coins"], p["price"]["amount_minor"]) for p in usd] == [
        ("coins_70", 70, 99),
        ("coins_350", 350, 499),
        ("coins_700", 700, 999),
        ("coins_1400", 1400, 1999),
        ("coins_3500", 3500, 4999),
        ("coins_7000", 7000, 9999),
        ("coins_17500", 17500, 24999),
    ]
    eur = (await payment.get("/v1/packages?currency=EUR")).json()["packages"]
    assert {p["price"]["currency"] for p in eur} == {"EUR"}
    assert (await payment.get("/v1/packages?currency=JPY")).json()["packages"] == []
    assert (await payment.get("/v1/packages?currency=dollars")).status_code == 400
