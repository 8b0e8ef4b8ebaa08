"""Helpers of the end-to-end tests: buying through payment, crashing a service."""

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from devstack.procs import pid_alive
from shared import topics
from tests.e2e.conftest import Stack
from tests.support import TopicReader, eventually, publish, purchase_request

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
    async with httpx.AsyncClient(base_url=stack.urls["wallet"]) as http:
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
    await publish(
        infra.kafka_bootstrap, topics.PURCHASE_REQUESTED, [(r["user_id"], r) for r in requests]
    )
    return await reader.wait_for_all(
        topics.PURCHASE_COMPLETED, "request_id", [r["request_id"] for r in requests], timeout_s=120
    )


def coins_by_user(purchases: Any) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for purchase in purchases:
        total[purchase["user_id"]] += purchase["coins"] + purchase["bonus_coins"]
    return total
