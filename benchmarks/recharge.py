"""Benchmark: purchases end to end on a running stack (`make up`), not a test.

Publishes N purchase requests as upstream apps would, waits for every
`wallet.coins-credited`, and prints purchases per second and the latency from publishing
a request to its credit (p50 / p95 / p99). Run: `make bench` or
`python -m benchmarks.recharge --count 20000 --rate 2000`.
"""

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared import topics
from shared.settings import InfraSettings

PER_USER = 10  # stays under the 20-per-hour velocity limit and the daily cap


@dataclass
class Run:
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    first_sent: float = 0.0
    last_credit: float = 0.0


def requests(count: int, run_id: str) -> list[tuple[str, bytes, str]]:
    """(key, value, request_id) for `count` requests spread over count / PER_USER users."""
    out = []
    occurred_at = datetime.now(UTC).isoformat()
    for i in range(count):
        user_id = f"bench-{run_id}-{i // PER_USER}"
        request_id = f"bench-{run_id}-{i}"
        body = {
            "request_id": request_id,
            "user_id": user_id,
            "package_id": "coins_70",
            "price": {"amount_minor": 99, "currency": "USD"},
            "payment_method": "pm_card_ok",
            "occurred_at": occurred_at,
        }
        out.append((user_id, json.dumps(body).encode(), request_id))
    return out


async def publish(
    producer: AIOKafkaProducer, batch: list[tuple[str, bytes, str]], run: Run, rate: float
) -> None:
    run.first_sent = time.perf_counter()
    pending = []
    for i, (key, value, request_id) in enumerate(batch):
        if rate:
            # Open-loop pacing: request i is due at i / rate seconds after the start.
            delay = run.first_sent + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        run.sent_at[request_id] = time.perf_counter()
        pending.append(await producer.send(topics.PURCHASE_REQUESTED, value, key=key.encode()))
    await asyncio.gather(*pending)


async def collect(consumer: AIOKafkaConsumer, run: Run, expected: int) -> None:
    while len(run.latencies) < expected:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            now = time.perf_counter()
            for record in records:
                request_id = json.loads(record.value).get("request_id")
                sent = run.sent_at.pop(request_id, None)
                if sent is not None:
                    run.latencies.append(now - sent)
                    run.last_credit = now


async def listening(bootstrap: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        topics.COINS_CREDITED,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    for partition in consumer.assignment():
        await consumer.position(partition)  # pin "latest" before anything is published
    return consumer


def report(run: Run, count: int, rate: float) -> None:
    elapsed = run.last_credit - run.first_sent
    ms = sorted(latency * 1000 for latency in run.latencies)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    print(f"purchases:        {count} (offered rate: {rate or 'as fast as possible'}/s)")
    print(f"elapsed:          {elapsed:.2f} s (first request -> last credit)")
    print(f"throughput:       {count / elapsed:,.0f} purchases/s end to end")
    print(f"latency p50/p95/p99: {q[49]:.0f} / {q[94]:.0f} / {q[98]:.0f} ms  (max {ms[-1]:.0f} ms)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=0, help="requests/s; 0 = unpaced")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    bootstrap = InfraSettings().kafka_bootstrap_servers
    run = Run()
    consumer = await listening(bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        batch = requests(args.count, uuid.uuid4().hex[:6])
        collector = asyncio.create_task(collect(consumer, run, args.count))
        await publish(producer, batch, run, args.rate)
        await asyncio.wait_for(collector, timeout=args.timeout)
    finally:
        await producer.stop()
        await consumer.stop()
    report(run, args.count, args.rate)


if __name__ == "__main__":
    asyncio.run(main())
