"""The webhook route alone, with a stand-in service: what it answers before and after
the one service call (the whole flow is in tests/integration/test_payment_webhook.py)."""

import json
import time
from typing import Any, cast

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette

from services.payment import webhooks
from services.payment.domain import NoticeOutcome
from services.payment.service import PaymentService
from services.payment.settings import PaymentSettings
from shared.contracts import ChargebackReceived

SECRET = "whsec_unit"
BODY = json.dumps(
    {
        "chargeback_id": "cb_1",
        "payment_id": "pay_1",
        "user_id": "u1",
        "occurred_at": "2026-11-22T13:00:00+00:00",
        "reason_code": "fraudulent",  # unknown fields are ignored, as in every message
    }
).encode()


class StandIn:
    def __init__(self, outcome: NoticeOutcome) -> None:
        self.outcome = outcome
        self.notices: list[ChargebackReceived] = []

    async def accept_chargeback_notice(self, notice: ChargebackReceived) -> NoticeOutcome:
        self.notices.append(notice)
        return self.outcome


async def post(
    body: bytes,
    *,
    outcome: NoticeOutcome = "accepted",
    secret: str | None = SECRET,
    signed: bool = True,
) -> tuple[httpx.Response, StandIn, CollectorRegistry]:
    service = StandIn(outcome)
    registry = CollectorRegistry()
    settings = PaymentSettings(chargeback_webhook_secret=secret)
    routes = webhooks.routes(cast(PaymentService, service), settings, registry)
    transport = httpx.ASGITransport(app=Starlette(routes=routes))
    headers = {"Signature": webhooks.signature_header(SECRET, body, int(time.time()))}
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        answer = await client.post(webhooks.PATH, content=body, headers=headers if signed else {})
    return answer, service, registry


async def test_a_valid_notice_is_one_service_call() -> None:
    answer, service, registry = await post(BODY)
    assert (answer.status_code, answer.json()) == (
        200,
        {"status": "accepted", "chargeback_id": "cb_1"},
    )
    assert [(n.chargeback_id, n.payment_id, n.user_id) for n in service.notices] == [
        ("cb_1", "pay_1", "u1")
    ]
    metrics = generate_latest(registry).decode()
    assert 'coinstream_chargeback_notices_total{outcome="accepted"} 1.0' in metrics


async def test_the_service_outcomes_become_answers() -> None:
    expected: dict[NoticeOutcome, tuple[int, dict[str, Any]]] = {
        "duplicate": (200, {"status": "duplicate", "chargeback_id": "cb_1"}),
        "idempotency_conflict": (409, {"error": "idempotency_conflict"}),
        "unknown_payment": (422, {"error": "unknown_payment"}),
        "user_mismatch": (422, {"error": "user_mismatch"}),
    }
    for outcome, (status, body) in expected.items():
        answer, _, _ = await post(BODY, outcome=outcome)
        assert answer.status_code == status, outcome
        assert body.items() <= answer.json().items(), outcome


async def test_a_signed_body_that_is_not_a_notice_is_refused_before_the_service() -> None:
    for body in (b"not json", b"[]", json.dumps({"chargeback_id": "cb_1"}).encode()):
        answer, service, _ = await post(body)
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_notice")
        assert service.notices == []
    answer, _, _ = await post(json.dumps({"chargeback_id": "cb_1"}).encode())
    assert "payment_id: Field required" in answer.json()["detail"]


async def test_a_notice_is_refused_unsigned_too_large_or_with_the_webhook_off() -> None:
    unsigned, service, _ = await post(BODY, signed=False)
    assert (unsigned.status_code, unsigned.json()["error"]) == (400, "missing_signature")
    huge, _, _ = await post(b" " * (webhooks.MAX_BODY_BYTES + 1))
    assert (huge.status_code, huge.json()["error"]) == (413, "too_large")
    off, off_service, _ = await post(BODY, secret=None)
    assert (off.status_code, off.json()["error"]) == (503, "webhook_disabled")
    assert service.notices == off_service.notices == []
