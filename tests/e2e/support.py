"""Helpers of the end-to-end tests: buying through payment, crashing a service."""

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Any

import asyncpg
import httpx

from devstack.procs import pid_alive
from shared import topics
from tests.e2e.conftest import Stack
from tests.support import TopicReader, eventually, publish, purchase_request, stack_auth, unique

PACKAGES = [("coins_70", 99), ("coins_350", 499), ("coins_700", 999)]


async def restart_after_crash(
    stack: Stack, service: str, crash_at: str, publish_load: Callable[[], Awaitable[None]]
) -> None:
    """Start a `service` that SIGKILLs itself at `crash_at`, publish the load, wait for
    the kill, start a healthy one."""
    await stack.stop(service)
    doomed = await stack.start(service, COINSTREAM_CRASH_AT=crash_at)
    await publish_load()

    async def died() -> bool:
        return not pid_alive(doomed.pid)

    await eventually(died, timeout_s=60)
    await stack.start(service)


async def balances_become(stack: Stack, expected: dict[str, int]) -> bool:
    async with httpx.AsyncClient(base_url=stack.urls["wallet"], headers=stack_auth()) as http:
        for user, coins in expected.items():
            body = (await http.get(f"/v1/users/{user}/balance")).json()
            if body["coins"] != coins or body["frozen"]:
                return False
    return True


async def buy(
    stack: Stack,
    infra: Any,
    reader: TopicReader,
    users: list[str],
    count: int,
    packages: list[tuple[str, int]] = PACKAGES,
) -> dict[str, dict[str, Any]]:
    """`count` purchases spread over `users`, cycling through `packages` (id, price),
    published at once; their completions."""
    requests = [
        purchase_request(
            user_id=users[n % len(users)],
            package_id=packages[n % len(packages)][0],
            amount=packages[n % len(packages)][1],
        )
        for n in range(count)
    ]
    await publish(infra, topics.PURCHASE_REQUESTED, [(r["user_id"], r) for r in requests])
    return await reader.wait_for_all(
        topics.PURCHASE_COMPLETED, "request_id", [r["request_id"] for r in requests], timeout_s=120
    )


def coins_by_user(purchases: Any) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for purchase in purchases:
        total[purchase["user_id"]] += purchase["coins"] + purchase["bonus_coins"]
    return total


async def register_creators(
    infra: Any, database_url: str, creators: dict[str, tuple[bool, str, str]]
) -> None:
    """Report creators as the identity system does: id -> (verified, method, currency).
    No event answers it, so wait until the payout service has kept each of them."""
    await publish(
        infra,
        topics.CREATOR_UPDATED,
        [
            (
                creator,
                {
                    "creator_id": creator,
                    "verified": verified,
                    "payout_method": method,
                    "currency": currency,
                    "occurred_at": "2026-11-22T09:00:00+00:00",
                },
            )
            for creator, (verified, method, currency) in creators.items()
        ],
    )

    async def all_kept() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM payout.creators WHERE creator_id = ANY($1)", list(creators)
            )
        finally:
            await conn.close()
        return bool(found == len(creators))

    await eventually(all_kept)


async def outcomes_of(
    reader: TopicReader, outcome_topics: tuple[str, ...], request_ids: Iterable[str]
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every distinct outcome event (topic, body) of each request, once each has one.
    A relay killed mid-publish may repeat an event: the same event_id counts once."""
    wanted = set(request_ids)

    async def all_answered() -> dict[str, list[tuple[str, dict[str, Any]]]] | None:
        found: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
        for topic in outcome_topics:
            for body in reader.matching(topic):
                if body.get("request_id") in wanted:
                    found.setdefault(body["request_id"], {})[body["event_id"]] = (topic, body)
        if len(found) < len(wanted):
            return None
        return {request_id: list(events.values()) for request_id, events in found.items()}

    return await eventually(all_answered, timeout_s=120)


async def balances(stack: Stack, users: Iterable[str]) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=stack.urls["wallet"], headers=stack_auth()) as http:
        return {user: (await http.get(f"/v1/users/{user}/balance")).json() for user in users}


def gift(sender: str, creator: str, gift_id: str, quantity: int, stream: str) -> dict[str, Any]:
    return {
        "request_id": unique("gift"),
        "sender_id": sender,
        "creator_id": creator,
        "gift_id": gift_id,
        "quantity": quantity,
        "stream_id": stream,
        "occurred_at": "2026-11-22T14:00:00+00:00",
    }


async def diamonds_become(stack: Stack, expected: dict[str, Decimal]) -> bool:
    async with httpx.AsyncClient(base_url=stack.urls["wallet"], headers=stack_auth()) as http:
        for creator, diamonds in expected.items():
            body = (await http.get(f"/v1/users/{creator}/balance")).json()
            if Decimal(str(body["diamonds"])) != diamonds:
                return False
    return True
