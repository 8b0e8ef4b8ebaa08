"""One trace per request, across the services as processes: a purchase's spans go from
payment to the wallet, a gift's from gifting to the wallet and back to gifting, each
in one trace, linked hop by hop through the Kafka headers and the outbox.

payment, wallet and gifting are restarted with tracing on (the file exporter, one
JSON line per span, the SDK's own form), then restarted as they were."""

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from shared import acl, topics
from tests.e2e.conftest import Stack
from tests.e2e.support import gift
from tests.support import TopicReader, eventually, publish, purchase_request, unique

pytestmark = pytest.mark.e2e

TRACED = ("payment", "wallet", "gifting")
UPSTREAM_TRACE = os.urandom(16).hex()
UPSTREAM_SPAN = os.urandom(8).hex()


@pytest.fixture
async def traced(stack: Stack, tmp_path: Path) -> AsyncIterator[Path]:
    """The three services restarted with their spans going to a file of this test."""
    spans = tmp_path / "spans.jsonl"
    env = {
        "OTEL_TRACES_EXPORTER": "file",
        "COINSTREAM_TRACES_FILE": str(spans),
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # spans reach the file within 0.1 s
    }
    try:
        for service in TRACED:
            await stack.stop(service)
            await stack.start(service, **env)
        yield spans
    finally:
        for service in TRACED:  # as the other tests expect them: tracing off
            await stack.stop(service)
            await stack.start(service)


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hex_id(value: str | None) -> str | None:
    return value.removeprefix("0x") if value else None


def chain(spans: list[dict[str, Any]], request_id: str) -> list[tuple[str, str]] | None:
    """The (service, span name) path of one request's trace, from the span that handled
    its request down to the last publish, following parent ids; None until complete."""
    found: list[dict[str, Any] | None] = [
        s
        for s in spans
        if s["attributes"].get("coinstream.request_id") == request_id
        and s["name"]
        in (f"{topics.GIFT_REQUESTED} process", f"{topics.PURCHASE_REQUESTED} process")
    ]
    [first] = found or [None]
    if first is None:
        return None
    trace_id = first["context"]["trace_id"]
    in_trace = [s for s in spans if s["context"]["trace_id"] == trace_id]
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in in_trace:
        children.setdefault(hex_id(span["parent_id"]), []).append(span)
    path, span = [], first
    while True:
        path.append((span["resource"]["attributes"]["service.name"], span["name"]))
        below = children.get(hex_id(span["context"]["span_id"]), [])
        if not below:
            return path
        # Each hop's outcome: follow the span toward the request's answer.
        span = below[0] if len(below) == 1 else _next(below)


def _next(below: list[dict[str, Any]]) -> dict[str, Any]:
    """Where a transaction wrote several events (the wallet's answer and its own
    coins-debited/diamonds-credited), follow the saga's answer."""
    wanted = (f"{topics.GIFT_DEBIT_ANSWERED} publish", f"{topics.GIFT_SENT} publish")
    return next((s for s in below if s["name"] in wanted), below[0])


async def test_a_purchase_and_a_gift_each_make_one_trace_across_the_services(
    traced: Path, infra: Any
) -> None:
    viewer, creator = unique("traced-viewer"), unique("traced-creator")
    purchase = purchase_request(user_id=viewer, package_id="coins_70", amount=99)
    present = gift(viewer, creator, "rose", 1, unique("live"))
    async with TopicReader(infra, (topics.COINS_CREDITED, topics.GIFT_SENT)) as reader:
        # The purchase arrives without trace headers: payment starts its trace.
        await publish(infra, topics.PURCHASE_REQUESTED, [(viewer, purchase)])
        await reader.wait_for(topics.COINS_CREDITED, request_id=purchase["request_id"])
        # The gift comes from an app that traces: gifting continues the app's trace.
        producer = AIOKafkaProducer(
            **infra.kafka(acl.owner_of(topics.GIFT_REQUESTED)).client_options()
        )
        await producer.start()
        try:
            upstream = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"
            await producer.send_and_wait(
                topics.GIFT_REQUESTED,
                json.dumps(present).encode(),
                key=viewer.encode(),
                headers=[("traceparent", upstream.encode())],
            )
        finally:
            await producer.stop()
        await reader.wait_for(topics.GIFT_SENT, request_id=present["request_id"])

    def complete(request_id: str, last: str) -> Any:
        async def done() -> list[tuple[str, str]] | None:
            found = chain(read_spans(traced), request_id)
            return found if found and found[-1][1] == last else None

        return done

    bought = await eventually(
        complete(purchase["request_id"], f"{topics.COINS_CREDITED} publish"), timeout_s=20
    )
    assert bought == [
        ("payment", f"{topics.PURCHASE_REQUESTED} process"),
        ("payment", "payment transaction"),
        ("payment", f"{topics.PURCHASE_COMPLETED} publish"),
        ("wallet", f"{topics.PURCHASE_COMPLETED} process"),
        ("wallet", "wallet transaction"),
        ("wallet", f"{topics.COINS_CREDITED} publish"),
    ]
    sent = await eventually(
        complete(present["request_id"], f"{topics.GIFT_SENT} publish"), timeout_s=20
    )
    assert sent == [
        ("gifting", f"{topics.GIFT_REQUESTED} process"),
        ("gifting", "gifting transaction"),
        ("gifting", f"{topics.GIFT_DEBIT_REQUESTED} publish"),
        ("wallet", f"{topics.GIFT_DEBIT_REQUESTED} process"),
        ("wallet", "wallet transaction"),
        ("wallet", f"{topics.GIFT_DEBIT_ANSWERED} publish"),
        ("gifting", f"{topics.GIFT_DEBIT_ANSWERED} process"),
        ("gifting", "gifting transaction"),
        ("gifting", f"{topics.GIFT_SENT} publish"),
    ]
    spans = read_spans(traced)
    gift_spans = [
        s for s in spans if s["attributes"].get("coinstream.request_id") == present["request_id"]
    ]
    # The gift's trace is the upstream app's, its first span the child of the app's span.
    assert {s["context"]["trace_id"] for s in gift_spans} == {f"0x{UPSTREAM_TRACE}"}
    [requested] = [s for s in gift_spans if s["name"] == f"{topics.GIFT_REQUESTED} process"]
    assert hex_id(requested["parent_id"]) == UPSTREAM_SPAN
    # The purchase's trace started at payment: its first span has no parent.
    [started] = [
        s
        for s in spans
        if s["attributes"].get("coinstream.request_id") == purchase["request_id"]
        and s["name"] == f"{topics.PURCHASE_REQUESTED} process"
    ]
    assert started["parent_id"] is None and started["kind"] == "SpanKind.CONSUMER"
