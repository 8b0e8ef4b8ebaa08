"""Traces: one per request, across every service and every hop (docs/operations.md#traces).

The trace context travels in Kafka headers (W3C `traceparent`/`tracestate`, or what
OTEL_PROPAGATORS names). A request from an upstream app starts its trace where it is
first handled, or continues the `traceparent` the app sent. Per record and hop:

- `<topic> process` (CONSUMER): the record's handling, child of the context in its
  headers; its child `<service> transaction` (INTERNAL) is the service's work on the
  batch (the database transaction with inbox, state and outbox rows, retries included).
- The outbox rows the work writes keep the context of the record that caused them
  (matched by `request_id`; `outbox.headers`, kit-0003); the relay publishes each under
  `<topic> publish` (PRODUCER), child of that context, and sends that span's context in
  the record's headers, where the next service picks it up.

Off unless an exporter is asked for: OTEL_TRACES_EXPORTER (`otlp`, `console`, or
`file` with COINSTREAM_TRACES_FILE; `none`: off), or an OTLP endpoint
(OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). OTEL_SDK_DISABLED=true
turns it off whatever else is set. Every other OTEL_* variable the SDK knows applies
(sampler, batch processor, resource attributes, OTLP headers and timeouts). When off,
nothing here runs per record: the consumer and the relay check one flag per batch.

FastStream's telemetry middleware is not used: on a batch subscriber it makes one span
per batch with links to the messages (a trace per batch, not per request), and the
relay does not publish through FastStream.
"""

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes | None]]
"""Kafka record headers as aiokafka gives and takes them."""

TRACES_FILE_VARIABLE = "COINSTREAM_TRACES_FILE"
_EXPORTERS = ("otlp", "console", "file")


def wanted_exporters(env: Mapping[str, str] | None = None) -> list[str]:
    """The span exporters the environment asks for; empty: tracing is off.

    OTEL_TRACES_EXPORTER is a comma-separated list (`none` alone turns tracing off); when
    it is unset, an OTLP endpoint turns on `otlp`, and nothing else turns tracing on (the
    SDK's own default, otlp to localhost, would send to a collector that is not there).
    """
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        found = [name.strip() for name in named.split(",") if name.strip()]
        return [name for name in found if name != "none"]
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return ["otlp"] if any(env.get(name, "").strip() for name in endpoints) else []


class TracingConfigError(ValueError):
    """An exporter this build cannot provide, or one missing what it needs."""


def _exporter(name: str, service: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        protocol = env.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        )
        if protocol.strip() not in ("", "http/protobuf"):
            raise TracingConfigError(
                f"OTLP protocol {protocol!r} is not installed; coinstream exports OTLP over "
                "http/protobuf (unset OTEL_EXPORTER_OTLP_PROTOCOL or set it to http/protobuf)"
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout, TLS: from OTEL_EXPORTER_OTLP_*
    if name == "console":
        return ConsoleSpanExporter(service_name=service, formatter=_json_line)
    if name == "file":
        path = env.get(TRACES_FILE_VARIABLE, "").strip()
        if not path:
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER=file needs {TRACES_FILE_VARIABLE}")
        return _FileSpanExporter(path, service)
    raise TracingConfigError(
        f"unknown OTEL_TRACES_EXPORTER {name!r}; coinstream knows {', '.join(_EXPORTERS)}, none"
    )


def _json_line(span: ReadableSpan) -> str:
    """One span as one line of JSON (the SDK's own JSON form, without its indentation)."""
    text: str = span.to_json(indent=None)
    return text + "\n"


class _FileSpanExporter(ConsoleSpanExporter):
    """JSON lines appended to a file, closed at shutdown. Line-buffered: several
    processes may append to one file, each span line written whole."""

    def __init__(self, path: str, service: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        super().__init__(service_name=service, out=self._file, formatter=_json_line)

    def shutdown(self) -> None:
        super().shutdown()
        self._file.close()


class _HeaderGetter(Getter[Headers]):
    """Reads W3C headers out of Kafka's list of (name, bytes) pairs."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        found = [v.decode("latin-1") for k, v in carrier if k == key and v is not None]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _HeaderGetter()


def context_of(headers: Headers) -> Context:
    """The trace context a record's headers carry (an empty one when none)."""
    return propagate.extract(headers, getter=_GETTER)


def headers_of(span: Span) -> dict[str, str]:
    """The propagation headers that make `span` the parent of whoever reads them."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


@dataclass
class _Causes:
    """Which span caused what the current batch writes to the outbox."""

    by_request: dict[str, Span]
    only: Span | None  # a batch of one record: whatever it writes is its doing
    by_position: dict[tuple[str, int, int], Span]  # (topic, partition, offset): its consume span


_causes: ContextVar[_Causes | None] = ContextVar("trace_causes", default=None)
_on_anywhere = False  # any Tracing of this process was ever on: outbox writers look


def outbox_headers(messages: Iterable[Any]) -> list[str | None] | None:
    """For each message about to be written to the outbox, the JSON text of the headers
    to store with it (its cause's trace context), or None; None for the whole list when
    no message has any, so the writer can skip the column (and when tracing is off).

    The cause of a message is the record of the batch with the same `request_id`, the
    batch's only record, or else the span current where it is written (if any)."""
    if not _on_anywhere:
        return None
    causes = _causes.get()
    current = trace.get_current_span()
    fallback: Span | None = current if current.get_span_context().is_valid else None
    if causes is not None and causes.only is not None:
        fallback = causes.only
    found: list[str | None] = []
    for message in messages:
        span = fallback
        if causes is not None:
            request_id = getattr(message, "request_id", None)
            if isinstance(request_id, str):
                span = causes.by_request.get(request_id, fallback)
        found.append(json.dumps(headers_of(span)) if span is not None else None)
    return found if any(text is not None for text in found) else None


def stored_headers(text: str | None) -> tuple[tuple[str, bytes], ...]:
    """An outbox row's `headers` (JSON object text, or NULL) as Kafka headers."""
    if not text:
        return ()
    return tuple((name, str(value).encode()) for name, value in json.loads(text).items())


def _messaging(topic: str, operation: str, **more: Any) -> dict[str, Any]:
    attributes = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
    }
    attributes.update({k: v for k, v in more.items() if v is not None})
    return attributes


def _event_id(headers: Headers) -> str | None:
    for name, value in headers:
        if name == "event_id" and value is not None:
            return value.decode(errors="replace")
    return None


class Tracing:
    """A service's tracer; `Tracing.off()` (or an environment asking for no exporter)
    makes `enabled` false, and then none of its methods should be called per record.

    Each service has a provider of its own (not the global one), so services run in one
    process (tests) each export under their own `service.name`."""

    def __init__(self, service: str, provider: TracerProvider | None = None) -> None:
        self.service = service
        self._provider = provider
        self._tracer: Tracer | None = provider.get_tracer("coinstream") if provider else None
        self.enabled = provider is not None
        if self.enabled:
            global _on_anywhere
            _on_anywhere = True

    @classmethod
    def off(cls, service: str = "") -> "Tracing":
        return cls(service)

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> "Tracing":
        """Tracing as the OTEL_* variables ask (off when they ask for no exporter)."""
        env = os.environ if env is None else env
        names = wanted_exporters(env)
        if not names:
            return cls.off(service)
        exporters = [_exporter(name, service, env) for name in names]
        # Resource.create reads OTEL_RESOURCE_ATTRIBUTES; the service's own name wins over
        # OTEL_SERVICE_NAME, which one environment may give all four services.
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        for exporter in exporters:
            # Batches of spans on a thread of the SDK's (OTEL_BSP_* tune it); a span ended
            # costs a queue append on the service's loop.
            provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("tracing on: spans exported to %s", ", ".join(names))
        return cls(service, provider)

    @property
    def tracer(self) -> Tracer:
        if self._tracer is None:
            raise RuntimeError("tracing is off")
        return self._tracer

    def shutdown(self) -> None:
        """Export what is left (the provider's processors flush) and stop."""
        if self._provider is not None:
            self._provider.shutdown()

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        return self._provider.force_flush(timeout_ms) if self._provider is not None else True

    @contextmanager
    def handling(
        self,
        records: Sequence[Any],
        request_ids: Sequence[str | None],
        *,
        group: str | None = None,
    ) -> Iterator[None]:
        """Spans for a batch being applied: per record `<topic> process`, child of its
        headers' context, and its child `<service> transaction`; while inside, outbox
        writers find each record's transaction span by request_id (`outbox_headers`).
        An error out of the batch marks every span of it."""
        tracer = self.tracer
        size = len(records)
        work: list[Span] = []
        spans: list[Span] = []
        by_request: dict[str, Span] = {}
        by_position: dict[tuple[str, int, int], Span] = {}
        for record, request_id in zip(records, request_ids, strict=True):
            consume = tracer.start_span(
                f"{record.topic} process",
                context=context_of(record.headers),
                kind=SpanKind.CONSUMER,
                attributes=_messaging(
                    record.topic,
                    "process",
                    **{
                        "messaging.destination.partition.id": str(record.partition),
                        "messaging.kafka.offset": record.offset,
                        "messaging.consumer.group.name": group,
                        "messaging.message.id": _event_id(record.headers),
                        "messaging.batch.message_count": size,
                        "coinstream.request_id": request_id,
                    },
                ),
            )
            transaction = tracer.start_span(
                f"{self.service} transaction",
                context=trace.set_span_in_context(consume),
                attributes={"coinstream.batch_size": size},
            )
            spans += (transaction, consume)
            work.append(transaction)
            by_position[record.topic, record.partition, record.offset] = consume
            if request_id is not None:
                by_request.setdefault(request_id, transaction)
        token = _causes.set(_Causes(by_request, work[0] if size == 1 else None, by_position))
        try:
            yield
        except BaseException as error:
            _fail(spans, error)
            raise
        finally:
            _causes.reset(token)
            for span in spans:  # the transaction before its consume span
                span.end()

    def dead_lettered(self, record: Any, reason: str) -> None:
        """Mark the consume span of a record of the batch in hand as dead-lettered."""
        causes = _causes.get()
        span = causes and causes.by_position.get((record.topic, record.partition, record.offset))
        if span:
            span.set_attribute("coinstream.dead_letter.reason", reason)
            span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {reason}"))

    @contextmanager
    def publishing(self, records: Sequence[Any]) -> Iterator[list[Any]]:
        """`<topic> publish` spans for outbox records about to be sent, each the child of
        the context stored with its row (a root when there is none); yields the records
        with their headers replaced by their publish span's. The spans end when the block
        does (the broker acknowledged, or failed: then they say so)."""
        tracer = self.tracer
        spans: list[Span] = []
        traced: list[Any] = []
        size = len(records)
        for record in records:
            span = tracer.start_span(
                f"{record.topic} publish",
                context=context_of(record.headers),
                kind=SpanKind.PRODUCER,
                attributes=_messaging(
                    record.topic,
                    "send",
                    **{
                        "messaging.message.id": record.event_id,
                        "messaging.batch.message_count": size,
                    },
                ),
            )
            spans.append(span)
            carried = headers_of(span)
            kept = [(k, v) for k, v in record.headers if k not in carried]
            headers = (*kept, *((k, v.encode()) for k, v in carried.items()))
            traced.append(record._replace(headers=headers))
        try:
            yield traced
        except BaseException as error:
            _fail(spans, error)
            raise
        finally:
            for span in spans:
                span.end()


def _fail(spans: Iterable[Span], error: BaseException) -> None:
    for span in spans:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
