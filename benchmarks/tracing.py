"""What tracing costs per record, without Kafka or PostgreSQL: the consumer's `process`
of a batch (whose work writes one outbox row per record) and the relay's publish
spans, tracing off and on (spans exported by the SDK's batch processor to a file).

    .venv/bin/python -m benchmarks.tracing [--batch 500] [--rounds 40]

Prints microseconds per record, and a reference loop to scale them by on a busy machine;
not a test. The figures are CPU on the service's loop only: the export itself runs on the
SDK's thread (it costs CPU there too)."""

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

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


class _Broker:
    def add_middleware(self, _: object) -> None:
        pass


async def consume(traced: Tracing, batch: int, rounds: int) -> float:
    """Microseconds per record of `process` (the spans, the outbox headers)."""
    dead_letters = DeadLetters(
        _Broker(),  # type: ignore[arg-type]
        service="wallet",
        registry=CollectorRegistry(),
        tracing=traced,
    )
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    deliveries = [
        Delivery(_Record("gifting.gift-debit-requested", 0, n, [("traceparent", parent)]), m)
        for n, m in enumerate(_Message(request_id=f"r{n}") for n in range(batch))
    ]

    async def apply(messages: list[Any]) -> None:
        outbox_headers(messages)

    started = time.perf_counter()
    for _ in range(rounds):
        await process(deliveries, apply, dead_letters)
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
    return (time.perf_counter() - started) / (rounds * batch) * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    # Every span kept (the default queue of 2048 drops some at this pace, and says so).
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(4 * args.batch * args.rounds))
    started = time.perf_counter()
    for n in range(1_000_000):
        isinstance(n, int)
    reference = (time.perf_counter() - started) * 1e3
    with tempfile.TemporaryDirectory() as folder:
        on = Tracing.from_env(
            "wallet",
            {
                "OTEL_TRACES_EXPORTER": "file",
                "COINSTREAM_TRACES_FILE": str(Path(folder) / "spans.jsonl"),
            },
        )
        tracing._on_anywhere = False  # as in a process that never traced
        off = Tracing.off("wallet")
        figures = {
            "consume, off": await consume(off, args.batch, args.rounds),
            "relay, off": publish(off, args.batch, args.rounds, None),
        }
        tracing._on_anywhere = True
        stored = '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}'
        figures |= {
            "consume, on (2 spans, 1 outbox header)": await consume(on, args.batch, args.rounds),
            "relay, on (1 span, headers in and out)": publish(on, args.batch, args.rounds, stored),
        }
        on.shutdown()
    print(f"{'reference: 1M isinstance() calls':<42} {reference:8.1f} ms (~40 ms on an idle core)")
    for what, micros in figures.items():
        print(f"{what:<42} {micros:8.1f} µs/record")


if __name__ == "__main__":
    asyncio.run(main())
