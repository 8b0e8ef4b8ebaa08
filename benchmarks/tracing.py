"""What tracing costs per record, without Kafka or PostgreSQL: the consumer's `process`
of a batch (whose work writes one outbox row per record) and the relay's publish
spans, tracing off and on: the spans alone (an exporter that drops them), and with the
`file` exporter (the SDK's batch processor, flushed inside the timing).

    .venv/bin/python -m benchmarks.tracing [--batch 500] [--rounds 40]

Prints microseconds per record, and a reference loop to scale them by on a busy machine;
not a test. The figures are CPU on the service's loop only: the export itself runs on the
SDK's thread (it costs CPU there too)."""

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from shared import tracing
from shared.consumer import DeadLetters, Delivery, process
from shared.outbox import OutboxRecord
from shared.tracing import Tracing, outbox_headers, stored_headers


class _Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    headers: list[tuple[str, bytes | None]]


class _Message(BaseModel):
    request_id: str


class _Dropped(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Broker:
    def add_middleware(self, _: object) -> None:
        pass


SAMPLED = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NOT_SAMPLED = SAMPLED[:-2] + b"00"


async def consume(traced: Tracing, batch: int, rounds: int, parent: bytes = SAMPLED) -> float:
    """Microseconds per record of `process` (the spans, the outbox headers)."""
    dead_letters = DeadLetters(
        _Broker(),  # type: ignore[arg-type]
        service="wallet",
        registry=CollectorRegistry(),
        tracing=traced,
    )
    deliveries = [
        Delivery(_Record("gifting.gift-debit-requested", 0, n, [("traceparent", parent)]), m)
        for n, m in enumerate(_Message(request_id=f"r{n}") for n in range(batch))
    ]

    async def apply(messages: list[Any]) -> None:
        outbox_headers(messages)

    started = time.perf_counter()
    for _ in range(rounds):
        await process(deliveries, apply, dead_letters)
    traced.force_flush()
    return (time.perf_counter() - started) / (rounds * batch) * 1e6


def publish(traced: Tracing, batch: int, rounds: int, headers: str | None) -> float:
    """Microseconds per row of what the relay adds: the stored headers, the spans."""
    rows = [("gifting.gift-sent", b"u", b"{}", f"e{n}", headers) for n in range(batch)]
    started = time.perf_counter()
    for _ in range(rounds):
        records = [
            OutboxRecord(t, k, v, e, stored_headers(h) if h else ()) for t, k, v, e, h in rows
        ]
        if traced.enabled:
            with traced.publishing(records):
                pass
    traced.force_flush()
    return (time.perf_counter() - started) / (rounds * batch) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    # Every span kept (the default queue of 2048 drops some at this pace, and says so).
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(4 * args.batch * args.rounds))
    tracing._on_anywhere = False  # as in a process that never traced
    off = Tracing.off("wallet")
    figures = {
        "off: consume": (await consume(off, args.batch, args.rounds), reference_ms()),
        "off: relay": (publish(off, args.batch, args.rounds, None), reference_ms()),
    }
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Dropped()))
    spans_only = Tracing("wallet", provider)  # sets _on_anywhere
    stored = '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}'
    unsampled = stored.replace("-01", "-00")
    figures |= {
        "spans only: consume (2 spans, 1 header out)": (
            await consume(spans_only, args.batch, args.rounds),
            reference_ms(),
        ),
        "spans only: relay (1 span, headers in, out)": (
            publish(spans_only, args.batch, args.rounds, stored),
            reference_ms(),
        ),
        "not sampled: consume": (
            await consume(spans_only, args.batch, args.rounds, NOT_SAMPLED),
            reference_ms(),
        ),
        "not sampled: relay": (
            publish(spans_only, args.batch, args.rounds, unsampled),
            reference_ms(),
        ),
    }
    with tempfile.TemporaryDirectory() as folder:
        to_file = Tracing.from_env(
            "wallet",
            {
                "OTEL_TRACES_EXPORTER": "file",
                "COINSTREAM_TRACES_FILE": str(Path(folder) / "spans.jsonl"),
            },
        )
        figures |= {
            "file exporter: consume": (
                await consume(to_file, args.batch, args.rounds),
                reference_ms(),
            ),
            "file exporter: relay": (
                publish(to_file, args.batch, args.rounds, stored),
                reference_ms(),
            ),
        }
        to_file.shutdown()
    print(f"{'':<44} {'µs/record':>10} {'idle core':>10}  (reference loop)")
    for what, (micros, reference) in figures.items():
        scaled = micros * IDLE_REFERENCE_MS / reference
        print(f"{what:<44} {micros:10.1f} {scaled:10.1f}  ({reference:.0f} ms)")


IDLE_REFERENCE_MS = 40.0  # 1M isinstance() calls on an idle core of this machine


def reference_ms() -> float:
    """A fixed loop, timed: how busy the machine is now (each figure is scaled by the
    one measured right after it, to what an idle core would take)."""
    started = time.perf_counter()
    for n in range(1_000_000):
        isinstance(n, int)
    return (time.perf_counter() - started) * 1e3


if __name__ == "__main__":
    asyncio.run(main())
