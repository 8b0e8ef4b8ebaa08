"""The signed chargeback webhook of the payment service, against real Kafka and PostgreSQL:
a valid notice reverses the purchase once, however often it is delivered; anything
unsigned, badly signed, stale or naming what payment does not know changes nothing."""

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from services.payment.main import create_app
from services.payment.settings import PaymentSettings
from services.payment.webhooks import PATH, SIGNATURE_HEADER, signature_header
from shared import topics
from tests.support import TopicReader, eventually, in_process, publish, purchase_request, unique

pytestmark = pytest.mark.integration

SECRET = f"whsec_it_{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
async def payment(service_settings: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    """One payment service for the module, with the webhook's secret configured."""
    settings = service_settings(PaymentSettings, chargeback_webhook_secret=SECRET)
    async with in_process(create_app(settings)) as client:
        yield client


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def notice(chargeback_id: str, payment_id: str, user_id: str) -> bytes:
    body = {
        "chargeback_id": chargeback_id,
        "payment_id": payment_id,
        "user_id": user_id,
        "occurred_at": "2026-11-22T13:00:00Z",
    }
    return json.dumps(body).encode()


async def deliver(
    client: httpx.AsyncClient,
    body: bytes,
    *,
    secret: str = SECRET,
    at: int | None = None,
    header: str | None = None,
) -> httpx.Response:
    """POST a notice as the provider does: signed with `secret` at `at` (now), unless
    `header` gives the Signature header as it is (or "" for none)."""
    if header is None:
        header = signature_header(secret, body, int(time.time()) if at is None else at)
    headers = {SIGNATURE_HEADER: header} if header else {}
    return await client.post(PATH, content=body, headers=headers)


async def completed_purchases(infra: Any, user: str, count: int = 1) -> list[str]:
    """Buy `count` packages for `user`; their payment_ids once completed."""
    requests = [purchase_request(user_id=user) for _ in range(count)]
    async with TopicReader(infra, (topics.PURCHASE_COMPLETED,)) as reader:
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, r) for r in requests])
        found = await reader.wait_for_all(
            topics.PURCHASE_COMPLETED, "request_id", [r["request_id"] for r in requests]
        )
    return [found[r["request_id"]]["payment_id"] for r in requests]


async def recorded(db: asyncpg.Connection, chargeback_ids: list[str]) -> dict[str, int]:
    """How many notices, outbox rows (waiting or published) and chargebacks payment
    holds for these ids."""
    counts = {}
    for name, tables, column in (
        ("webhook_notices", ["webhook_notices"], "chargeback_id"),
        ("outbox", ["outbox", "outbox_published"], "event_id"),
        ("chargebacks", ["chargebacks"], "chargeback_id"),
    ):
        counts[name] = sum(
            [
                await db.fetchval(
                    f"SELECT count(*) FROM payment.{table} WHERE {column} = ANY($1::text[])",
                    chargeback_ids,
                )
                for table in tables
            ]
        )
    return counts


async def status_of(db: asyncpg.Connection, payment_id: str) -> str:
    status: str = await db.fetchval(
        "SELECT status FROM payment.purchases WHERE payment_id = $1", payment_id
    )
    return status


async def test_a_signed_notice_reverses_the_purchase_once_however_often_it_arrives(
    payment: httpx.AsyncClient, infra: Any, db: asyncpg.Connection
) -> None:
    user = unique("user")
    (payment_id,) = await completed_purchases(infra, user)
    chargeback, later = unique("cb"), unique("cb")
    body = notice(chargeback, payment_id, user)
    signed_at = int(time.time())

    async with TopicReader(infra, (topics.CHARGEBACK_RECEIVED, topics.PURCHASE_REVERSED)) as reader:
        first = await deliver(payment, body, at=signed_at)
        assert (first.status_code, first.json()) == (
            200,
            {"status": "accepted", "chargeback_id": chargeback},
        )
        # The provider retries: the very same request, then the notice signed anew.
        for again in (await deliver(payment, body, at=signed_at), await deliver(payment, body)):
            assert (again.status_code, again.json()["status"]) == (200, "duplicate")
        # A later chargeback for the same payment and user, after the replays: once its
        # message is through, any second message of the first would have been seen.
        assert (await deliver(payment, notice(later, payment_id, user))).status_code == 200
        await reader.wait_for(topics.CHARGEBACK_RECEIVED, chargeback_id=later)
        await reader.wait_for(topics.PURCHASE_REVERSED, payment_id=payment_id)

        async def both_handled() -> list[asyncpg.Record] | None:
            rows = await db.fetch(
                "SELECT chargeback_id, outcome FROM payment.chargebacks"
                " WHERE chargeback_id = ANY($1::text[])",
                [chargeback, later],
            )
            return rows if len(rows) == 2 else None

        outcomes = {row["chargeback_id"]: row["outcome"] for row in await eventually(both_handled)}
        received = reader.matching(topics.CHARGEBACK_RECEIVED, user_id=user)
        reversed_ = reader.matching(topics.PURCHASE_REVERSED, payment_id=payment_id)

    assert [m["chargeback_id"] for m in received] == [chargeback, later]
    assert received[0] == json.loads(body)  # the notice as it came, the request's shape
    assert [(r["request_id"], r["user_id"], r["coins"]) for r in reversed_] == [
        (chargeback, user, 70)
    ]
    assert outcomes == {chargeback: "reversed", later: "already_reversed"}
    assert await status_of(db, payment_id) == "reversed"
    assert await recorded(db, [chargeback]) == {"webhook_notices": 1, "outbox": 1, "chargebacks": 1}


async def test_unsigned_badly_signed_malformed_and_stale_notices_change_nothing(
    payment: httpx.AsyncClient, infra: Any, db: asyncpg.Connection
) -> None:
    user = unique("user")
    (payment_id,) = await completed_purchases(infra, user)
    chargeback = unique("cb")
    body = notice(chargeback, payment_id, user)
    now = int(time.time())
    tampered = notice(chargeback, payment_id, unique("user"))

    answers = {
        "missing": await deliver(payment, body, header=""),
        "another secret": await deliver(payment, body, secret="not the secret"),
        "another body": await deliver(
            payment, tampered, header=signature_header(SECRET, body, now)
        ),
        "malformed": await deliver(payment, body, header=f"v1={'0' * 64}"),
        "not hex": await deliver(payment, body, header=f"t={now},v1=zz"),
        "stale": await deliver(payment, body, at=now - 301),
        "from the future": await deliver(payment, body, at=now + 301),
    }

    assert {name: (a.status_code, a.json()["error"]) for name, a in answers.items()} == {
        "missing": (400, "missing_signature"),
        "another secret": (400, "bad_signature"),
        "another body": (400, "bad_signature"),
        "malformed": (400, "malformed_signature"),
        "not hex": (400, "malformed_signature"),
        "stale": (400, "stale_signature"),
        "from the future": (400, "stale_signature"),
    }
    assert await recorded(db, [chargeback]) == {"webhook_notices": 0, "outbox": 0, "chargebacks": 0}
    assert await status_of(db, payment_id) == "completed"

    # Nothing reached Kafka either: a later valid notice of the same user (same key,
    # same partition) is the first chargeback message for that user.
    later = unique("cb")
    async with TopicReader(infra, (topics.CHARGEBACK_RECEIVED,)) as reader:
        assert (await deliver(payment, notice(later, payment_id, user))).status_code == 200
        await reader.wait_for(topics.CHARGEBACK_RECEIVED, chargeback_id=later)
        received = reader.matching(topics.CHARGEBACK_RECEIVED, user_id=user)
    assert [m["chargeback_id"] for m in received] == [later]


async def test_a_notice_for_a_payment_not_completed_here_for_that_user_is_refused(
    payment: httpx.AsyncClient, infra: Any, db: asyncpg.Connection
) -> None:
    user, other = unique("user"), unique("user")
    (payment_id,) = await completed_purchases(infra, user)
    unknown, mismatched = unique("cb"), unique("cb")

    never = await deliver(payment, notice(unknown, f"pay_{uuid.uuid4().hex}", user))
    not_theirs = await deliver(payment, notice(mismatched, payment_id, other))

    assert (never.status_code, never.json()["error"]) == (422, "unknown_payment")
    assert (not_theirs.status_code, not_theirs.json()["error"]) == (422, "user_mismatch")
    assert await recorded(db, [unknown, mismatched]) == {
        "webhook_notices": 0,
        "outbox": 0,
        "chargebacks": 0,
    }
    assert await status_of(db, payment_id) == "completed"


async def test_a_chargeback_id_reused_for_another_payment_is_a_conflict(
    payment: httpx.AsyncClient, infra: Any, db: asyncpg.Connection
) -> None:
    user = unique("user")
    first_payment, second_payment = await completed_purchases(infra, user, count=2)
    chargeback = unique("cb")

    accepted = await deliver(payment, notice(chargeback, first_payment, user))
    reused = await deliver(payment, notice(chargeback, second_payment, user))

    assert accepted.status_code == 200
    assert (reused.status_code, reused.json()["error"]) == (409, "idempotency_conflict")

    async def reversed_() -> bool:
        return await status_of(db, first_payment) == "reversed"

    await eventually(reversed_)
    assert await recorded(db, [chargeback]) == {"webhook_notices": 1, "outbox": 1, "chargebacks": 1}
    assert await status_of(db, second_payment) == "completed"


async def test_without_a_secret_the_webhook_is_off(service_settings: Callable[..., Any]) -> None:
    settings = service_settings(PaymentSettings, chargeback_webhook_secret=None)
    app = create_app(settings)  # not started: the answer needs neither Kafka nor the database
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        body = notice(unique("cb"), "pay_1", "user_1")
        unsigned = await client.post(PATH, content=body)
        signed = await deliver(client, body, secret="")
    assert (unsigned.status_code, unsigned.json()["error"]) == (503, "webhook_disabled")
    assert (signed.status_code, signed.json()["error"]) == (503, "webhook_disabled")
