"""The payment service against real Kafka and PostgreSQL: outcomes and idempotency."""

import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from services.payment.main import create_app
from services.payment.settings import PaymentSettings
from shared import topics
from shared.money import default_usd_rates
from tests.support import TopicReader, eventually, in_process, publish, purchase_request, unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def payment(
    service_settings: Callable[..., Any], operator_token: str
) -> AsyncIterator[httpx.AsyncClient]:
    """One payment service for the module (joining a consumer group takes seconds); it
    looks up purchases in doubt 1 s after their charge (longer than its whole retry
    budget, ~0.1 s)."""
    settings = service_settings(
        PaymentSettings,
        usd_per_unit={**default_usd_rates(), "KWD": Decimal("3.26")},
        provider_retry_base_s=0.01,
        reconcile_after_s=1.0,
        reconcile_interval_s=0.2,
    )
    async with in_process(create_app(settings), token=operator_token) as client:
        yield client


async def card_charges(database_url: str, request_id: str) -> list[tuple[str, int]]:
    """(outcome, calls) of the simulated provider's charges under this idempotency key."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT outcome, calls FROM payment.simulated_card_charges WHERE idempotency_key = $1",
            request_id,
        )
    finally:
        await conn.close()
    return [(row["outcome"], row["calls"]) for row in rows]


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
    async with TopicReader(infra, outcome_topics) as reader:
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, r) for r in sent])
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


async def test_a_price_beyond_any_integer_column_is_refused_not_dead_lettered(
    payment: httpx.AsyncClient, infra: Any
) -> None:
    user = unique("user")
    huge = [purchase_request(user_id=user, amount=n) for n in (2**63, 10**30, -(2**63) - 1)]
    found = await outcomes(infra, user, huge)

    assert [(found[r["request_id"]]["topic"], found[r["request_id"]]["reason"]) for r in huge] == [
        (topics.PURCHASE_FAILED, "invalid_request")
    ] * 3
    status = (await payment.get(f"/v1/purchases/{huge[0]['request_id']}")).json()
    assert (status["status"], status["reason"]) == ("failed", "invalid_request")


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
    jpy = (await payment.get("/v1/packages?currency=JPY")).json()["packages"]
    assert [(p["package_id"], p["price"]["amount_minor"]) for p in jpy][:2] == [
        ("coins_70", 160),  # whole yen: JPY has no minor unit
        ("coins_350", 800),
    ]
    assert (await payment.get("/v1/packages?currency=CHF")).json()["packages"] == []
    assert (await payment.get("/v1/packages?currency=dollars")).status_code == 400


async def test_prices_are_charged_in_their_own_minor_unit(
    payment: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    """¥160 is charged as 160 (yen have no minor unit) and 1.500 KWD as 1500 fils; a
    KWD price an operator added with SQL sells at once. The cap reads each exactly."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            INSERT INTO payment.package_prices (package_id, currency, amount_minor)
            VALUES ('coins_350', 'KWD', 1500) ON CONFLICT DO NOTHING
            """
        )
    finally:
        await conn.close()
    user = unique("user")
    yen = purchase_request(user_id=user, amount=160, currency="JPY")
    dinar = purchase_request(user_id=user, package_id="coins_350", amount=1500, currency="KWD")
    not_sold = purchase_request(user_id=user, amount=99, currency="CHF")  # no rate, no price
    found = await outcomes(infra, user, [yen, dinar, not_sold])

    assert [
        (found[r["request_id"]]["topic"], found[r["request_id"]].get("coins"))
        for r in (
            yen,
            dinar,
        )
    ] == [(topics.PURCHASE_COMPLETED, 70), (topics.PURCHASE_COMPLETED, 350)]
    assert found[not_sold["request_id"]]["reason"] == "invalid_request"
    conn = await asyncpg.connect(database_url)
    try:
        charged = await conn.fetch(
            """
            SELECT amount_minor, currency FROM payment.simulated_card_charges
            WHERE idempotency_key = ANY($1::text[]) ORDER BY currency
            """,
            [yen["request_id"], dinar["request_id"]],
        )
    finally:
        await conn.close()
    assert [tuple(row) for row in charged] == [(160, "JPY"), (1500, "KWD")]


async def outcomes(
    infra: Any, user: str, requests: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Publish requests for one user; return request_id -> outcome event, once all have one."""
    outcome_topics = (topics.PURCHASE_COMPLETED, topics.PURCHASE_FAILED)
    async with TopicReader(infra, outcome_topics) as reader:
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, r) for r in requests])
        wanted = {r["request_id"] for r in requests}

        async def all_answered() -> dict[str, dict[str, Any]] | None:
            found = {
                body["request_id"]: body | {"topic": topic}
                for topic in outcome_topics
                for body in reader.matching(topic, user_id=user)
            }
            return found if wanted <= set(found) else None

        return await eventually(all_answered)


async def test_a_flaky_card_is_retried_and_charged_exactly_once(
    payment: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    user = unique("user")
    request = purchase_request(user_id=user, method="pm_card_flaky")
    found = await outcomes(infra, user, [request])
    assert found[request["request_id"]]["topic"] == topics.PURCHASE_COMPLETED
    # One charge, asked twice: the first answer was lost, the retry got the approval.
    assert await card_charges(database_url, request["request_id"]) == [("approved", 2)]


async def test_a_charge_whose_answer_is_lost_stays_pending_then_completes_once(
    payment: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    """pm_card_timeout charges but no answer arrives: the purchase is neither failed nor
    charged again; reconciliation finds the charge by its key and completes it once."""
    user = unique("user")
    request = purchase_request(
        user_id=user, package_id="coins_350", amount=499, method="pm_card_timeout"
    )
    request_id = request["request_id"]
    outcome_topics = (topics.PURCHASE_COMPLETED, topics.PURCHASE_FAILED)
    async with TopicReader(infra, outcome_topics) as reader:
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, request)])

        async def charged_in_doubt() -> bool:
            return bool(await card_charges(database_url, request_id))

        await eventually(charged_in_doubt)
        status = (await payment.get(f"/v1/purchases/{request_id}")).json()
        assert status["status"] in ("pending", "completed")  # never failed
        [completed] = await reader.wait_for(topics.PURCHASE_COMPLETED, request_id=request_id)
        sentinel = purchase_request(user_id=user)  # published after: its outcome comes later
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, sentinel)])
        await reader.wait_for(topics.PURCHASE_COMPLETED, request_id=sentinel["request_id"])
        assert len(reader.matching(topics.PURCHASE_COMPLETED, request_id=request_id)) == 1
        assert reader.matching(topics.PURCHASE_FAILED, request_id=request_id) == []

    assert (completed["coins"], completed["price"]["amount_minor"]) == (350, 499)
    # Every attempt of the retry budget reached the provider; it charged once.
    assert await card_charges(database_url, request_id) == [("approved", 4)]
    status = (await payment.get(f"/v1/purchases/{request_id}")).json()
    assert (status["status"], status["payment_id"]) == ("completed", completed["payment_id"])
    metrics = (await payment.get("/metrics")).text
    assert 'coinstream_purchases_reconciled_total{outcome="completed"}' in metrics
    assert "coinstream_purchases_in_doubt " in metrics
    # A pass finished: the stale-gauge alert reads when (a float, not the initial 0.0).
    reconciled_at = re.search(
        r"^coinstream_purchases_reconciled_timestamp_seconds (\S+)$", metrics, re.M
    )
    assert reconciled_at is not None and float(reconciled_at.group(1)) > time.time() - 60


async def test_a_provider_that_is_down_ends_as_provider_unavailable(
    payment: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    """The charge never reaches the provider; the lookup does, and finds no charge."""
    user = unique("user")
    request = purchase_request(user_id=user, method="pm_card_down")
    found = await outcomes(infra, user, [request])
    assert found[request["request_id"]]["reason"] == "provider_unavailable"
    assert await card_charges(database_url, request["request_id"]) == []
    status = (await payment.get(f"/v1/purchases/{request['request_id']}")).json()
    assert (status["status"], status["reason"]) == ("failed", "provider_unavailable")
    metrics = (await payment.get("/metrics")).text
    assert 'coinstream_purchases_reconciled_total{outcome="provider_unavailable"}' in metrics


async def test_the_daily_spend_cap(payment: httpx.AsyncClient, infra: Any) -> None:
    user = unique("user")
    big = [
        purchase_request(user_id=user, package_id="coins_17500", amount=24999) for _ in range(11)
    ]
    found = await outcomes(infra, user, big)
    reasons = [found[r["request_id"]].get("reason") for r in big]
    assert reasons == [None] * 10 + ["limit_exceeded"]  # $2,499.90 passes, $2,749.89 does not
    another_user = unique("user")
    small = purchase_request(user_id=another_user)
    assert (await outcomes(infra, another_user, [small]))[small["request_id"]].get("reason") is None


async def test_the_hourly_velocity_limit(payment: httpx.AsyncClient, infra: Any) -> None:
    user = unique("user")
    first = [purchase_request(user_id=user) for _ in range(15)]
    await outcomes(infra, user, first)  # earlier purchases, in another batch, count too
    rest = [purchase_request(user_id=user) for _ in range(6)]
    found = await outcomes(infra, user, rest)
    assert [found[r["request_id"]].get("reason") for r in rest] == [None] * 5 + ["limit_exceeded"]


async def test_a_request_id_reused_for_another_request_is_dead_lettered_and_the_first_stands(
    payment: httpx.AsyncClient, infra: Any
) -> None:
    user = unique("user")
    original = purchase_request(user_id=user)
    conflicting = original | {
        "package_id": "coins_350",
        "price": {"amount_minor": 499, "currency": "USD"},
    }
    later = purchase_request(user_id=user)
    dlq = topics.dlq(topics.PURCHASE_REQUESTED)
    async with TopicReader(infra, (dlq, topics.PURCHASE_COMPLETED)) as reader:
        await publish(
            infra,
            topics.PURCHASE_REQUESTED,
            [(user, original), (user, conflicting), (user, later)],
        )
        await reader.wait_for(topics.PURCHASE_COMPLETED, request_id=later["request_id"])
        await reader.wait_for(dlq, request_id=original["request_id"], package_id="coins_350")
        dead = [r for r in reader.records if r.topic == dlq and r.key == user.encode()]
        completed = reader.matching(topics.PURCHASE_COMPLETED, user_id=user)

    assert [dict(r.headers)["dlq.reason"] for r in dead] == [b"idempotency_conflict"]
    assert [(c["request_id"], c["coins"]) for c in completed] == [
        (original["request_id"], 70),
        (later["request_id"], 70),
    ]


async def test_a_promotion_adds_bonus_coins_when_received_inside_its_window_only(
    payment: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    now = datetime.now(UTC)
    conn = await asyncpg.connect(database_url)
    try:
        promotion_ids = [
            await conn.fetchval(
                "INSERT INTO payment.promotions (package_id, bonus_coins, starts_at, ends_at)"
                " VALUES ($1, $2, $3, $4) RETURNING promotion_id",
                package,
                bonus,
                now + starts,
                now + ends,
            )
            for package, bonus, starts, ends in [
                ("coins_1400", 140, timedelta(hours=-1), timedelta(hours=1)),  # running
                ("coins_3500", 350, timedelta(hours=-3), timedelta(hours=-1)),  # ended
            ]
        ]
        user = unique("user")
        inside = purchase_request(user_id=user, package_id="coins_1400", amount=1999)
        inside["occurred_at"] = now.isoformat()
        before = purchase_request(user_id=user, package_id="coins_1400", amount=1999)
        before["occurred_at"] = (now - timedelta(hours=2)).isoformat()
        # Backdated into the ended promotion: the client's clock is not trusted.
        backdated = purchase_request(user_id=user, package_id="coins_3500", amount=4999)
        backdated["occurred_at"] = (now - timedelta(hours=2)).isoformat()
        found = await outcomes(infra, user, [inside, before, backdated])
        packages = (await payment.get("/v1/packages")).json()["packages"]
    finally:
        await conn.execute(
            "DELETE FROM payment.promotions WHERE promotion_id = ANY($1)", promotion_ids
        )
        await conn.close()

    assert (found[inside["request_id"]]["coins"], found[inside["request_id"]]["bonus_coins"]) == (
        1400,
        140,
    )
    assert found[before["request_id"]]["bonus_coins"] == 140  # received while it runs
    assert (
        found[backdated["request_id"]]["coins"],
        found[backdated["request_id"]]["bonus_coins"],
    ) == (
        3500,
        0,
    )
    bonuses = {p["package_id"]: p["bonus_coins"] for p in packages}
    assert (bonuses["coins_1400"], bonuses["coins_3500"]) == (140, 0)


async def test_chargebacks_reverse_a_completed_purchase_once_and_record_the_rest(
    payment: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    user = unique("user")
    bought = purchase_request(user_id=user, package_id="coins_700", amount=999)
    payment_id = (await outcomes(infra, user, [bought]))[bought["request_id"]]["payment_id"]

    def chargeback(chargeback_id: str, payment: str) -> tuple[str, dict[str, Any]]:
        return user, {
            "chargeback_id": chargeback_id,
            "payment_id": payment,
            "user_id": user,
            "occurred_at": "2026-11-22T13:00:00Z",
        }

    first, again, unknown = unique("cb"), unique("cb"), unique("cb")
    sentinel_purchase = purchase_request(user_id=user)
    async with TopicReader(infra, (topics.PURCHASE_REVERSED,)) as reader:
        await publish(
            infra,
            topics.CHARGEBACK_RECEIVED,
            [
                chargeback(first, payment_id),
                chargeback(first, payment_id),  # the same chargeback redelivered
                chargeback(again, payment_id),  # a second chargeback for the same payment
                chargeback(unknown, "pay_never_existed"),
            ],
        )
        await reader.wait_for(topics.PURCHASE_REVERSED, payment_id=payment_id)

        async def all_recorded() -> list[asyncpg.Record] | None:
            rows = await fetch_chargebacks(database_url, [first, again, unknown])
            return rows if len(rows) == 3 else None

        rows = await eventually(all_recorded)
        await outcomes(infra, user, [sentinel_purchase])  # later traffic for the same key
        reversed_ = reader.matching(topics.PURCHASE_REVERSED, user_id=user)

    assert [(r["payment_id"], r["coins"], r["request_id"]) for r in reversed_] == [
        (payment_id, 700, first)
    ]
    assert {row["chargeback_id"]: row["outcome"] for row in rows} == {
        first: "reversed",
        again: "already_reversed",
        unknown: "unknown_payment",
    }
    status = (await payment.get(f"/v1/purchases/{bought['request_id']}")).json()
    assert status["status"] == "reversed"


async def fetch_chargebacks(database_url: str, ids: list[str]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT chargeback_id, outcome FROM payment.chargebacks"
                " WHERE chargeback_id = ANY($1)",
                ids,
            )
        )
    finally:
        await conn.close()
