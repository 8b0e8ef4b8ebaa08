"""Tracing without Kafka or PostgreSQL: when it is on, the environment that turns it on,
the context carried from a consumed record to the outbox row and from the row to the
published record, and the off path doing no tracing work."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from shared import tracing
from shared.consumer import DeadLetters, Delivery, process
from shared.errors import PermanentError
from shared.outbox import OutboxRecord
from shared.tracing import (
    Tracing,
    TracingConfigError,
    outbox_headers,
    stored_headers,
    wanted_exporters,
)

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM = f"00-{UPSTREAM_TRACE}-00f067aa0ba902b7-01"


class Record(NamedTuple):
    """What the tracing reads of an aiokafka ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    headers: list[tuple[str, bytes | None]]
    key: bytes | None = None
    value: bytes | None = None


class Message(BaseModel):
    request_id: str


@pytest.fixture
def spans() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing("gifting", provider), exporter
    provider.shutdown()


def traceparent(headers: Any) -> tuple[str, str]:
    """(trace id, parent span id) of a traceparent header, from a dict or a header list."""
    value = headers["traceparent"] if isinstance(headers, dict) else dict(headers)["traceparent"]
    text = value.decode() if isinstance(value, bytes) else value
    _, trace_id, span_id, _ = text.split("-")
    return trace_id, span_id


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console,file"}, ["console", "file"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "TRUE"}, []),
    ],
)
def test_tracing_is_on_only_when_the_environment_names_an_exporter(
    env: dict[str, str], expected: list[str]
) -> None:
    assert wanted_exporters(env) == expected
    if not expected:
        assert Tracing.from_env("wallet", env).enabled is False


def test_an_exporter_that_cannot_work_is_refused_at_start() -> None:
    with pytest.raises(TracingConfigError, match="COINSTREAM_TRACES_FILE"):
        Tracing.from_env("wallet", {"OTEL_TRACES_EXPORTER": "file"})
    with pytest.raises(TracingConfigError, match="http/protobuf"):
        Tracing.from_env(
            "wallet", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )
    with pytest.raises(TracingConfigError, match="zipkin"):
        Tracing.from_env("wallet", {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_the_file_exporter_writes_one_json_line_per_span_named_by_service(
    tmp_path: Path,
) -> None:
    path = tmp_path / "traces.jsonl"
    traced = Tracing.from_env(
        "payment", {"OTEL_TRACES_EXPORTER": "file", "COINSTREAM_TRACES_FILE": str(path)}
    )
    assert traced.enabled
    with traced.handling([Record("payment.purchase-requested", 0, 7, [])], ["r1"]):
        pass
    traced.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert {line["name"] for line in lines} == {
        "payment.purchase-requested process",
        "payment transaction",
    }
    assert {line["resource"]["attributes"]["service.name"] for line in lines} == {"payment"}
    assert len({line["context"]["trace_id"] for line in lines}) == 1


def test_a_record_continues_its_headers_trace_and_the_outbox_row_keeps_its_context(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    traced, exporter = spans
    records = [
        Record("gifting.gift-requested", 3, 41, [("traceparent", UPSTREAM.encode())]),
        Record("gifting.gift-requested", 3, 42, []),  # an upstream app without a trace
    ]
    with traced.handling(records, ["g1", "g2"], group="coinstream-gifting"):
        stored = outbox_headers(
            [Message(request_id="g2"), Message(request_id="g1"), Message(request_id="unrelated")]
        )
    assert stored is not None and stored[2] is None  # no cause found, no current span
    first, second = (json.loads(text) for text in stored[1::-1] if text is not None)
    by_name: dict[tuple[str, str], ReadableSpan] = {}
    for span in exporter.get_finished_spans():
        by_name[span.name, ids(span)[0]] = span
    # The first record continues the upstream trace; the second starts its own.
    consume = by_name["gifting.gift-requested process", UPSTREAM_TRACE]
    work = by_name["gifting transaction", UPSTREAM_TRACE]
    assert consume.kind is SpanKind.CONSUMER and parent_id(consume) == "00f067aa0ba902b7"
    assert parent_id(work) == ids(consume)[1]
    assert consume.attributes is not None
    assert consume.attributes["messaging.kafka.offset"] == 41
    assert consume.attributes["messaging.consumer.group.name"] == "coinstream-gifting"
    assert consume.attributes["coinstream.request_id"] == "g1"
    # What the batch wrote for g1 names g1's transaction span as its parent.
    assert traceparent(first) == ids(work)
    own_trace, _ = traceparent(second)
    assert own_trace != UPSTREAM_TRACE
    assert {ids(s)[0] for s in exporter.get_finished_spans()} == {UPSTREAM_TRACE, own_trace}


def test_the_relay_publishes_a_row_under_a_span_that_continues_its_stored_context(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    traced, exporter = spans
    stored = stored_headers(json.dumps({"traceparent": UPSTREAM}))
    rows = [
        OutboxRecord("gifting.gift-debit-requested", b"u1", b"{}", "e1", stored),
        OutboxRecord("gifting.gift-debit-requested", b"u2", b"{}", "e2"),  # a row from before
    ]
    with traced.publishing(rows) as sent:
        assert [r.event_id for r in sent] == ["e1", "e2"]
    [first, second] = sorted(exporter.get_finished_spans(), key=lambda s: str(s.attributes))
    assert first.kind is SpanKind.PRODUCER and first.name == "gifting.gift-debit-requested publish"
    assert ids(first)[0] == UPSTREAM_TRACE and parent_id(first) == "00f067aa0ba902b7"
    assert parent_id(second) is None  # an old row: its publish starts a trace
    # The record goes out with its publish span as the next service's parent, once.
    assert traceparent(sent[0].headers) == ids(first)
    assert [name for name, _ in sent[0].headers] == ["traceparent"]
    assert traceparent(sent[1].headers) == ids(second)


def test_a_failed_publish_marks_its_spans(spans: tuple[Tracing, InMemorySpanExporter]) -> None:
    traced, exporter = spans
    with (
        pytest.raises(ConnectionError),
        traced.publishing([OutboxRecord("t", b"k", b"{}", "e")]),
    ):
        raise ConnectionError("broker gone")
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ConnectionError: broker gone"


def test_stored_headers_pass_through_unchanged_when_the_relay_does_not_trace() -> None:
    text = json.dumps({"traceparent": UPSTREAM, "tracestate": "vendor=1"})
    assert stored_headers(text) == (
        ("traceparent", UPSTREAM.encode()),
        ("tracestate", b"vendor=1"),
    )
    assert stored_headers(None) == ()


class _Broker:
    def add_middleware(self, _: object) -> None:
        pass


async def test_with_tracing_off_a_batch_is_applied_without_any_tracing_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The off path never reaches the tracer (`Tracing.off().tracer` raises) and the
    outbox writers skip the headers column without looking at a single message."""
    monkeypatch.setattr(tracing, "_on_anywhere", False)
    dead_letters = DeadLetters(
        _Broker(),  # type: ignore[arg-type]
        service="wallet",
        registry=CollectorRegistry(),
    )
    assert dead_letters.tracing.enabled is False
    with pytest.raises(RuntimeError, match="tracing is off"):
        _ = dead_letters.tracing.tracer
    applied: list[list[Message]] = []
    stored: list[object] = []

    async def apply(messages: list[Message]) -> None:
        applied.append(messages)
        stored.append(outbox_headers(_Untouchable() for _ in messages))

    deliveries = [
        Delivery(
            Record("t", 0, n, [("traceparent", UPSTREAM.encode())]), Message(request_id=f"r{n}")
        )
        for n in range(3)
    ]
    await process(deliveries, apply, dead_letters)
    assert applied == [
        [Message(request_id="r0"), Message(request_id="r1"), Message(request_id="r2")]
    ]
    assert stored == [None]


class _Untouchable:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the off path read {name} of a message")


def test_the_demo_stack_traces_to_its_log_folder_only_when_asked_and_not_configured() -> None:
    from devstack.instances import get_instance
    from devstack.services import stack_tracing, traces_file

    instance = get_instance("test")
    asked = {"COINSTREAM_STACK_TRACES": "1"}
    assert stack_tracing(instance, {}) == {}
    assert stack_tracing(instance, asked) == {
        "OTEL_TRACES_EXPORTER": "file",
        "COINSTREAM_TRACES_FILE": str(traces_file(instance)),
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }
    assert traces_file(instance).parent == instance.logs
    # The operator's own tracing wins: a collector, or tracing disabled.
    assert stack_tracing(instance, asked | {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}) == {}
    assert stack_tracing(instance, asked | {"OTEL_SDK_DISABLED": "true"}) == {}


def test_the_demo_prints_a_trace_as_a_tree_parents_first(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    from devstack.demo import span_tree

    traced, exporter = spans
    with traced.handling([Record("gifting.gift-requested", 0, 1, [])], ["g"]):
        stored = outbox_headers([Message(request_id="g")])
    assert stored is not None and stored[0] is not None
    headers = stored_headers(stored[0])
    with traced.publishing(
        [OutboxRecord("gifting.gift-debit-requested", b"u", b"{}", "e", headers)]
    ):
        pass
    lines = [json.loads(span.to_json(indent=None)) for span in exporter.get_finished_spans()]
    tree = [(depth, span["name"]) for depth, span in span_tree(lines[::-1])]
    assert tree == [
        (0, "gifting.gift-requested process"),
        (1, "gifting transaction"),
        (2, "gifting.gift-debit-requested publish"),
    ]


def test_the_demo_sends_one_gift_with_a_traceparent_of_its_own_trace() -> None:
    from devstack.demo import Journey

    journey = Journey("t1")
    steps = [step for _, phase in journey.phases() for step in phase]
    [followed] = [step for step in steps if step.traceparent is not None]
    assert journey.followed == followed and followed.topic == "gifting.gift-requested"
    assert followed.traceparent is not None
    version, trace_id, parent, flags = followed.traceparent.split("-")
    assert (version, trace_id, flags) == ("00", journey.trace_id, "01") and len(parent) == 16


async def test_a_record_dead_lettered_in_its_batch_says_so_on_its_span(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    traced, exporter = spans
    dead_letters = DeadLetters(
        _Broker(),  # type: ignore[arg-type]
        service="wallet",
        registry=CollectorRegistry(),
        tracing=traced,
    )
    sent: list[int] = []

    async def publish(
        topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
    ) -> None:
        sent.append(1)

    dead_letters._publish = publish  # type: ignore[method-assign]

    async def apply(messages: list[Message]) -> None:
        if any(m.request_id == "bad" for m in messages):
            raise PermanentError("refused")  # the batch is halved until "bad" stands alone

    deliveries = [
        Delivery(Record("t", 0, n, []), Message(request_id=r))
        for n, r in enumerate(("good", "bad"))
    ]
    await process(deliveries, apply, dead_letters)
    assert sent == [1]
    [bad] = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "t process" and s.attributes and s.attributes["messaging.kafka.offset"] == 1
    ]
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.attributes is not None
    assert bad.attributes["coinstream.dead_letter.reason"] == "processing_failed"
