"""Two replicas each of payment, wallet and gifting under load; a third wallet replica
joins and another leaves mid-run (the consumer group rebalances while batches are in
hand): every request is answered once, every balance is exact, the audit passes."""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

import devstack
from shared import topics
from shared.db_roles import READER
from tests.e2e.conftest import Stack
from tests.e2e.support import balances_become, diamonds_become, gift
from tests.support import TopicReader, eventually, publish, purchase_request, run_audit, unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FANS, CREATORS = 120, 4
PURCHASES_PER_FAN = 2  # coins_70 each: 140 coins
GIFTS_PER_FAN = 3  # 3 pandas each (15 coins): 45 coins, 22.5 diamonds to the creator
WAVES = 12  # the load is spread over a few seconds, so replicas come and go under it


@pytest.fixture
async def replicas(stack: Stack) -> AsyncIterator[Stack]:
    """A second replica of payment, wallet and gifting beside the stack's first ones;
    every extra replica is stopped afterwards, whatever the test did."""
    try:
        await asyncio.gather(*(_start(stack, s, 1) for s in ("payment", "wallet", "gifting")))
        yield stack
    finally:
        for service in ("payment", "wallet", "gifting"):
            for replica in (1, 2):
                await devstack.stop_service(stack.instance, service, replica=replica)


async def test_replicas_joining_and_leaving_under_load_answer_each_request_once(
    replicas: Stack, infra: Any
) -> None:
    stack = replicas
    fans = [unique("fan") for _ in range(FANS)]
    creators = [unique("star") for _ in range(CREATORS)]
    stream = {creator: unique("stream") for creator in creators}
    purchases = [purchase_request(user_id=fan) for fan in fans for _ in range(PURCHASES_PER_FAN)]
    gifts = [
        gift(fan, creators[n % CREATORS], "panda", 3, stream[creators[n % CREATORS]])
        for n, fan in enumerate(fans)
        for _ in range(GIFTS_PER_FAN)
    ]
    outcomes = (
        topics.PURCHASE_COMPLETED,
        topics.PURCHASE_FAILED,
        topics.GIFT_SENT,
        topics.GIFT_REJECTED,
    )
    async with TopicReader(infra, outcomes) as reader:
        # A third wallet replica joins while the purchases arrive.
        await asyncio.gather(
            _in_waves(infra, topics.PURCHASE_REQUESTED, purchases, "user_id"),
            _start(stack, "wallet", 2, after_s=1.5),
        )
        purchased = await _answered_once(reader, purchases, outcomes[:2])
        await eventually(
            lambda: balances_become(stack, dict.fromkeys(fans, 70 * PURCHASES_PER_FAN)),
            timeout_s=120,
        )
        # One wallet replica leaves (a graceful stop) while the gifts arrive.
        await asyncio.gather(
            _in_waves(infra, topics.GIFT_REQUESTED, gifts, "sender_id"),
            _stop(stack, "wallet", 1, after_s=1.5),
        )
        sent = await _answered_once(reader, gifts, outcomes[2:])

    assert set(purchased) == {topics.PURCHASE_COMPLETED}
    assert set(sent) == {topics.GIFT_SENT}
    left = 70 * PURCHASES_PER_FAN - 15 * GIFTS_PER_FAN
    await eventually(lambda: balances_become(stack, dict.fromkeys(fans, left)), timeout_s=60)
    diamonds = {
        creator: Decimal(15 * GIFTS_PER_FAN * len(fans[i::CREATORS])) / 2
        for i, creator in enumerate(creators)
    }
    await eventually(lambda: diamonds_become(stack, diamonds), timeout_s=60)
    returncode, report = await run_audit(stack.endpoints.database(READER))
    assert returncode == 0, report


async def _start(stack: Stack, service: str, replica: int, *, after_s: float = 0.0) -> None:
    await asyncio.sleep(after_s)
    await devstack.start_service(
        stack.instance, service, stack.endpoints, replica=replica, env=stack.env
    )


async def _stop(stack: Stack, service: str, replica: int, *, after_s: float) -> None:
    await asyncio.sleep(after_s)
    assert await devstack.stop_service(stack.instance, service, replica=replica)


async def _in_waves(infra: Any, topic: str, requests: list[dict[str, Any]], key: str) -> None:
    for wave in range(WAVES):
        await publish(infra, topic, [(r[key], r) for r in requests[wave::WAVES]])
        await asyncio.sleep(0.4)


async def _answered_once(
    reader: TopicReader, requests: list[dict[str, Any]], outcome_topics: tuple[str, ...]
) -> Counter[str]:
    """Wait until every request has an outcome; fail if one has two. Returns how many
    requests each outcome topic answered. A relay that published and then lost its
    mark repeats an event with the same event_id: that is one outcome, seen twice."""
    ids = {r["request_id"] for r in requests}

    async def all_answered() -> dict[str, set[tuple[str, str]]] | None:
        found: dict[str, set[tuple[str, str]]] = {}
        for topic in outcome_topics:
            for body in reader.matching(topic):
                if body["request_id"] in ids:
                    found.setdefault(body["request_id"], set()).add((topic, body["event_id"]))
        return found if len(found) == len(ids) else None

    found = await eventually(all_answered, timeout_s=180)
    doubled = {request: events for request, events in found.items() if len(events) > 1}
    assert not doubled, f"{len(doubled)} requests answered more than once: {doubled}"
    return Counter(topic for events in found.values() for topic, _ in events)
