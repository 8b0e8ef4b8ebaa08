"""Benchmark: purchases end to end on a running stack (`make up`), not a test.

Publishes N purchase requests as upstream apps would, waits for every
`wallet.coins-credited`, and prints purchases per second and the latency from publishing
a request to its credit (p50 / p95 / p99). Run: `make bench` or
`python -m benchmarks.recharge --count 20000 --rate 2000`.
"""

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import uvloop

from benchmarks import common
from benchmarks.common import Outcomes, Published, Request
from devstack.instances import get_instance, stack_endpoints
from shared import acl, topics

PER_USER = 10  # stays under the 20-per-hour velocity limit and the daily cap


def requests(count: int, run_id: str) -> list[Request]:
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


def report(published: Published, credits: Outcomes, count: int, rate: float) -> None:
    elapsed = credits.last_at - published.first_sent
    print(f"purchases:        {count} (offered rate: {rate or 'as fast as possible'}/s)")
    print(f"elapsed:          {elapsed:.2f} s (first request -> last credit)")
    print(f"throughput:       {count / elapsed:,.0f} purchases/s end to end")
    print(common.latency_line("latency", credits.latencies.values()))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=0, help="requests/s; 0 = unpaced")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    # As an upstream app of the stack `make up` runs (the environment's servers, else
    # the local stack's `app` principal).
    kafka = stack_endpoints(get_instance("default")).kafka(acl.APP)
    published, credits = Published(), Outcomes()
    count: int = args.count

    def on_credit(_: str, body: dict[str, Any], now: float) -> None:
        credits.record(body.get("request_id"), published, now)

    def done() -> bool:
        return len(credits) >= count

    consumer = await common.listening(kafka, topics.COINS_CREDITED)
    producer = common.producer(kafka)
    await producer.start()
    try:
        batch = requests(args.count, common.run_id())
        collector = asyncio.create_task(common.consume(consumer, on_credit, done))
        await common.publish(producer, topics.PURCHASE_REQUESTED, batch, published, args.rate)
        async with asyncio.timeout(args.timeout):
            await collector
    finally:
        await producer.stop()
        await consumer.stop()
    report(published, credits, args.count, args.rate)


if __name__ == "__main__":
    uvloop.run(main())  # the client as lean as the services: it shares their cores
