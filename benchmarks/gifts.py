"""Benchmark: gifts end to end on a running stack (`make up`), not a test.

Seeds S senders with coins through real purchases (`coins_17500`, waiting for every
`wallet.coins-credited`), then publishes N gift requests round-robin from them to C
creators (one live stream each; roses, pandas and love bangs, one to three at a time),
open-loop at R gifts/s or as fast as it can. Listening to `gifting.gift-sent`,
`gifting.gift-rejected` and `wallet.diamonds-credited`, it prints gifts per second end to
end, sent vs rejected, the latency from publishing a gift request to its gift-sent and to
its creator's diamonds-credited (p50 / p95 / p99 / max), and the top 3 of one stream's
leaderboard as a sanity check. Run: `make bench` or
`python -m benchmarks.gifts --count 20000 --rate 500 --senders 2000 --creators 5`;
`--hot-creator` sends every gift to one creator (one diamonds account, one stream).
"""

import argparse
import asyncio
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import uvloop
from aiokafka import AIOKafkaProducer

from benchmarks import common
from benchmarks.common import Outcomes, Published, Request
from devstack.instances import get_instance, stack_endpoints
from shared import acl, topics
from shared.kafka_client import KafkaClientSettings

GIFTING_URL = "http://127.0.0.1:8083"
GIFT_COINS = {"rose": 1, "panda": 5, "love_bang": 25}  # the gifting service's catalog
MAX_QUANTITY = 3
PACKAGE_ID = "coins_17500"
PACKAGE_COINS = 17_500
PACKAGE_PRICE = {"amount_minor": 24_999, "currency": "USD"}
MAX_PURCHASES = 10  # per sender: payment's daily spend cap allows ten of these packages


@dataclass(frozen=True)
class Gift:
    request_id: str
    sender_id: str
    creator_id: str
    stream_id: str
    gift_id: str
    quantity: int

    @property
    def coins(self) -> int:
        return GIFT_COINS[self.gift_id] * self.quantity

    def request(self, occurred_at: str) -> Request:
        body = {
            "request_id": self.request_id,
            "sender_id": self.sender_id,
            "creator_id": self.creator_id,
            "gift_id": self.gift_id,
            "quantity": self.quantity,
            "stream_id": self.stream_id,
            "occurred_at": occurred_at,
        }
        return self.sender_id, json.dumps(body).encode(), self.request_id


def stream_of(run_id: str, creator: int) -> str:
    return f"bench-{run_id}-stream-{creator}"


def gifts(count: int, senders: int, creators: int, run_id: str) -> list[Gift]:
    """`count` gifts: senders round-robin, every gift and quantity mixed, creators in turn."""
    gift_ids = list(GIFT_COINS)
    out = []
    for i in range(count):
        creator = i % creators
        out.append(
            Gift(
                request_id=f"bench-{run_id}-gift-{i}",
                sender_id=f"bench-{run_id}-sender-{i % senders}",
                creator_id=f"bench-{run_id}-creator-{creator}",
                stream_id=stream_of(run_id, creator),
                gift_id=gift_ids[i % len(gift_ids)],
                quantity=1 + (i // len(gift_ids)) % MAX_QUANTITY,
            )
        )
    return out


def purchases_needed(batch: list[Gift]) -> dict[str, int]:
    """How many coin packages each sender buys to pay for all of its gifts."""
    coins: Counter[str] = Counter()
    for gift in batch:
        coins[gift.sender_id] += gift.coins
    needed = {sender: math.ceil(total / PACKAGE_COINS) for sender, total in coins.items()}
    if max(needed.values(), default=0) > MAX_PURCHASES:
        sys.exit(
            f"gifts: a sender would need more than {MAX_PURCHASES * PACKAGE_COINS:,} coins "
            "(payment's daily spend cap); use more --senders"
        )
    return needed


def purchases(needed: dict[str, int]) -> list[Request]:
    """(key, value, request_id) of the purchase requests that seed the senders."""
    occurred_at = datetime.now(UTC).isoformat()
    out = []
    for sender, times in needed.items():
        for n in range(times):
            request_id = f"{sender}-purchase-{n}"
            body = {
                "request_id": request_id,
                "user_id": sender,
                "package_id": PACKAGE_ID,
                "price": PACKAGE_PRICE,
                "payment_method": "pm_card_ok",
                "occurred_at": occurred_at,
            }
            out.append((sender, json.dumps(body).encode(), request_id))
    return out


async def seed(
    kafka: KafkaClientSettings, producer: AIOKafkaProducer, batch: list[Request], wait_s: float
) -> float:
    """Publish the purchases and wait for every credit; the seconds it took."""
    published, credits = Published(), Outcomes()
    failures: dict[str, Any] = {}

    def handle(topic: str, body: dict[str, Any], now: float) -> None:
        request_id = body.get("request_id")
        if topic == topics.PURCHASE_FAILED and request_id in published.sent_at:
            failures[request_id] = body.get("reason")
        else:
            credits.record(request_id, published, now)

    def done() -> bool:
        return len(credits) + len(failures) >= len(batch)

    consumer = await common.listening(kafka, topics.COINS_CREDITED, topics.PURCHASE_FAILED)
    try:
        collector = asyncio.create_task(common.consume(consumer, handle, done))
        await common.publish(producer, topics.PURCHASE_REQUESTED, batch, published, rate=0)
        if not await common.finished(collector, wait_s):
            missing = len(batch) - len(credits) - len(failures)
            sys.exit(f"gifts: seeding timed out after {wait_s:g} s, {missing} credits missing")
    finally:
        await consumer.stop()
    if failures:
        sys.exit(f"gifts: seeding purchases failed: {dict(Counter(failures.values()))}")
    return credits.last_at - published.first_sent


@dataclass
class GiftRun:
    """What came back for the gift requests: their outcome, and the creator's diamonds."""

    count: int
    published: Published = field(default_factory=Published)
    outcomes: Outcomes = field(default_factory=Outcomes)  # gift-sent or gift-rejected
    sent: Outcomes = field(default_factory=Outcomes)
    rejected: dict[str, Any] = field(default_factory=dict)  # request_id -> reason
    diamonds: Outcomes = field(default_factory=Outcomes)
    cpu: dict[str, float] = field(default_factory=dict)  # the services', while gifting

    def handle(self, topic: str, body: dict[str, Any], now: float) -> None:
        request_id = body.get("request_id")
        if topic == topics.DIAMONDS_CREDITED:
            self.diamonds.record(request_id, self.published, now)
        elif self.outcomes.record(request_id, self.published, now):
            if topic == topics.GIFT_SENT:
                self.sent.record(request_id, self.published, now)
            else:
                self.rejected[str(request_id)] = body.get("reason")

    def missing_outcomes(self) -> int:
        return self.count - len(self.outcomes)

    def missing_diamonds(self) -> int:
        return self.count - len(self.rejected) - len(self.diamonds)

    def done(self) -> bool:
        return self.missing_outcomes() <= 0 and self.missing_diamonds() <= 0

    def last_outcome(self) -> float:
        return max(self.outcomes.last_at, self.diamonds.last_at)


async def send_gifts(
    kafka: KafkaClientSettings,
    producer: AIOKafkaProducer,
    batch: list[Gift],
    rate: float,
    wait_s: float,
) -> GiftRun:
    """Publish the gift requests at `rate` and wait for every outcome and credit."""
    run = GiftRun(count=len(batch))
    occurred_at = datetime.now(UTC).isoformat()
    requests = [gift.request(occurred_at) for gift in batch]
    consumer = await common.listening(
        kafka, topics.GIFT_SENT, topics.GIFT_REJECTED, topics.DIAMONDS_CREDITED
    )
    try:
        collector = asyncio.create_task(common.consume(consumer, run.handle, run.done))
        await common.publish(producer, topics.GIFT_REQUESTED, requests, run.published, rate)
        if not await common.finished(collector, wait_s):
            sys.exit(
                f"gifts: timed out after {wait_s:g} s: {run.missing_outcomes()} of "
                f"{run.count} gifts without gift-sent/gift-rejected, "
                f"{run.missing_diamonds()} without diamonds-credited "
                f"({len(run.sent)} sent, {len(run.rejected)} rejected so far)"
            )
    finally:
        await consumer.stop()
    return run


def report(run: GiftRun, rate: float) -> None:
    elapsed = run.last_outcome() - run.published.first_sent
    print(f"gifts:            {run.count} (offered rate: {rate or 'as fast as possible'}/s)")
    print(f"elapsed:          {elapsed:.2f} s (first request -> last outcome)")
    print(f"throughput:       {run.count / elapsed:,.0f} gifts/s end to end")
    print(f"outcomes:         {len(run.sent)} sent, {len(run.rejected)} rejected")
    if run.rejected:
        print(f"rejection reasons: {dict(Counter(run.rejected.values()))}")
    print(common.latency_line("request -> gift-sent", run.sent.latencies.values()))
    print(common.latency_line("request -> diamonds-credited", run.diamonds.latencies.values()))
    print(common.cpu_line(run.cpu, run.count))


async def check_leaderboard(run: GiftRun, batch: list[Gift], stream_id: str) -> None:
    """Print the stream's top 3 from the gifting service and whether it matches the sent gifts."""
    expected: Counter[str] = Counter()
    for gift in batch:
        if gift.stream_id == stream_id and gift.request_id in run.sent.latencies:
            expected[gift.sender_id] += gift.coins
    url = f"{GIFTING_URL}/v1/streams/{stream_id}/leaderboard"
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url, params={"limit": 3})
            response.raise_for_status()
    except httpx.HTTPError as error:
        print(f"leaderboard:      unavailable ({error!r})")
        return
    entries = response.json()["entries"]
    print(f"leaderboard:      {stream_id} top 3")
    for entry in entries:
        print(f"  {entry['sender_id']:<40} {entry['coins']:>6} coins")
    top = sorted(expected.values(), reverse=True)[:3]
    agrees = [e["coins"] for e in entries] == top and all(
        expected[e["sender_id"]] == e["coins"] for e in entries
    )
    print("  matches the gifts sent" if agrees else f"  DIFFERS from the gifts sent: {top}")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


async def measure(
    count: int,
    rate: float = 0,
    *,
    senders: int = 2_000,
    creators: int = 5,
    timeout_s: float = 300,
) -> tuple[GiftRun, list[Gift], str]:
    """Seed the senders, send `count` gifts at `rate` (0 = unpaced) and wait for every
    outcome; the run, the gifts and the run's id."""
    # As an upstream app of the stack `make up` runs (the environment's servers, else
    # the local stack's `app` principal).
    instance = get_instance("default")
    kafka = stack_endpoints(instance).kafka(acl.APP)
    run_id = common.run_id()
    batch = gifts(count, senders, creators, run_id)
    needed = purchases_needed(batch)
    producer = common.producer(kafka)
    await producer.start()
    try:
        seconds = await seed(kafka, producer, purchases(needed), timeout_s)
        print(
            f"seeding:          {len(needed)} senders, {sum(needed.values())} purchases of "
            f"{PACKAGE_COINS:,} coins in {seconds:.2f} s"
        )
        before = common.services_cpu(instance, "gifting", "wallet")
        run = await send_gifts(kafka, producer, batch, rate, timeout_s)
        after = common.services_cpu(instance, "gifting", "wallet")
        run.cpu = {name: after[name] - before[name] for name in before if name in after}
    finally:
        await producer.stop()
    return run, batch, run_id


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=positive, default=20_000)
    parser.add_argument("--rate", type=float, default=0, help="gifts/s; 0 = unpaced")
    parser.add_argument("--senders", type=positive, default=2_000)
    parser.add_argument("--creators", type=positive, default=5)
    parser.add_argument(
        "--hot-creator", action="store_true", help="every gift to one creator (--creators 1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="s to wait for outcomes once published"
    )
    args = parser.parse_args()
    creators = 1 if args.hot_creator else args.creators
    run, batch, run_id = await measure(
        args.count, args.rate, senders=args.senders, creators=creators, timeout_s=args.timeout
    )
    report(run, args.rate)
    if args.hot_creator:
        print("creators:         1 (hot creator: every gift to one creator)")
    await check_leaderboard(run, batch, stream_of(run_id, 0))


if __name__ == "__main__":
    uvloop.run(main())  # the client as lean as the services: it shares their cores
