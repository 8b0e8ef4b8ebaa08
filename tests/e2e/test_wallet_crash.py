"""The wallet SIGKILLed in the middle of a batch, with many users' money in flight:
after a restart every balance is exact and the ledger audit passes."""

from collections import defaultdict
from typing import Any

import httpx
import pytest

from devstack.procs import pid_alive
from shared import topics
from tests.e2e.conftest import Stack
from tests.support import (
    TopicReader,
    eventually,
    publish,
    purchase_request,
    run_audit,
    unique,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PACKAGES = [("coins_70", 99), ("coins_350", 499), ("coins_700", 999)]


async def restart_after_crash(stack: Stack, crash_at: str, publish_load: Any) -> None:
    """Start a wallet that SIGKILLs itself at `crash_at`, publish the load, wait for
    the kill, start a healthy wallet."""
    await stack.stop("wallet")
    doomed = await stack.start("wallet", COINSTREAM_CRASH_AT=crash_at)
    await publish_load()

    async def wallet_died() -> bool:
        return not pid_alive(doomed.pid)

    await eventually(wallet_died, timeout_s=60)
    await stack.start("wallet")


async def balances_become(stack: Stack, expected: dict[str, int]) -> bool:
    async with httpx.AsyncClient(base_url=stack.urls["wallet"]) as http:
        for user, coins in expected.items():
            body = (await http.get(f"/v1/users/{user}/balance")).json()
            if body["coins"] != coins or body["frozen"]:
                return False
    return True


async def buy(
    stack: Stack, infra: Any, reader: TopicReader, users: list[str], count: int
) -> dict[str, dict[str, Any]]:
    """`count` purchases spread over `users`, published at once; their completions."""
    requests = [
        purchase_request(
            user_id=users[n % len(users)], package_id=PACKAGES[n % 3][0], amount=PACKAGES[n % 3][1]
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


async def test_the_wallet_killed_mid_batch_of_credits_leaves_every_balance_exact(
    stack: Stack, infra: Any
) -> None:
    """300 purchases over 100 users at once; the wallet dies inside its first batch's
    transaction (after writing entries, balances, inbox and outbox, before commit)."""
    users = [unique("crowd") for _ in range(100)]
    async with TopicReader(
        infra.kafka_bootstrap, (topics.PURCHASE_COMPLETED, topics.COINS_CREDITED)
    ) as reader:
        bought: dict[str, dict[str, Any]] = {}

        async def load() -> None:
            bought.update(await buy(stack, infra, reader, users, 300))

        await restart_after_crash(stack, "wallet.credit.before_commit", load)
        expected = coins_by_user(bought.values())
        await eventually(lambda: balances_become(stack, expected), timeout_s=120)
        credited = await reader.wait_for_all(
            topics.COINS_CREDITED, "payment_id", [p["payment_id"] for p in bought.values()]
        )
        events = {
            c["event_id"]
            for c in reader.matching(topics.COINS_CREDITED)
            if c["user_id"] in expected
        }

    # One credit event per payment; a relay killed mid-publish may repeat one, same id.
    assert len(credited) == len(events) == 300
    returncode, report = await run_audit(stack.endpoints.database_url)
    assert returncode == 0, report


async def test_the_wallet_killed_mid_batch_of_clawbacks_takes_every_reversal_back_once(
    stack: Stack, infra: Any
) -> None:
    """Chargebacks of half of 90 purchases over 30 users, through payment; the wallet
    dies inside its first batch of clawbacks and is restarted."""
    users = [unique("charged") for _ in range(30)]
    async with TopicReader(
        infra.kafka_bootstrap, (topics.PURCHASE_COMPLETED, topics.COINS_CLAWED_BACK)
    ) as reader:
        bought = list((await buy(stack, infra, reader, users, 90)).values())
        await eventually(lambda: balances_become(stack, coins_by_user(bought)), timeout_s=120)
        charged_back = bought[::2]

        async def load() -> None:
            await publish(
                infra.kafka_bootstrap,
                topics.CHARGEBACK_RECEIVED,
                [
                    (
                        p["user_id"],
                        {
                            "chargeback_id": unique("cb"),
                            "payment_id": p["payment_id"],
                            "user_id": p["user_id"],
                            "occurred_at": "2026-11-22T13:00:00+00:00",
                        },
                    )
                    for p in charged_back
                ],
            )

        await restart_after_crash(stack, "wallet.clawback.before_commit", load)
        kept = coins_by_user(bought[1::2])
        expected = {user: kept.get(user, 0) for user in users}
        await eventually(lambda: balances_become(stack, expected), timeout_s=120)
        await reader.wait_for_all(
            topics.COINS_CLAWED_BACK, "payment_id", [p["payment_id"] for p in charged_back]
        )
        events = {
            c["event_id"]
            for c in reader.matching(topics.COINS_CLAWED_BACK)
            if c["user_id"] in expected
        }

    assert len(events) == len(charged_back)  # one clawback event per reversed payment
    returncode, report = await run_audit(stack.endpoints.database_url)
    assert returncode == 0, report
