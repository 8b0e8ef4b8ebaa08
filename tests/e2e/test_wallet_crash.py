"""The wallet SIGKILLed in the middle of a batch, with many users' money in flight:
after a restart every balance is exact and the ledger audit passes."""

from typing import Any

import pytest

from shared import topics
from shared.db_roles import READER
from tests.e2e.conftest import Stack
from tests.e2e.support import balances_become, buy, coins_by_user, restart_after_crash
from tests.support import TopicReader, eventually, publish, run_audit, unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_the_wallet_killed_mid_batch_of_credits_leaves_every_balance_exact(
    stack: Stack, infra: Any
) -> None:
    """300 purchases over 100 users at once; the wallet dies inside its first batch's
    transaction (after writing entries, balances, inbox and outbox, before commit)."""
    users = [unique("crowd") for _ in range(100)]
    async with TopicReader(infra, (topics.PURCHASE_COMPLETED, topics.COINS_CREDITED)) as reader:
        bought: dict[str, dict[str, Any]] = {}

        async def load() -> None:
            bought.update(await buy(stack, infra, reader, users, 300))

        await restart_after_crash(stack, "wallet", "wallet.credit.before_commit", load)
        expected = coins_by_user(bought.values())
        await eventually(lambda: balances_become(stack, expected), timeout_s=120)
        credited = await reader.wait_for_all(
            topics.COINS_CREDITED, "payment_id", [p["payment_id"] for p in bought.values()]
        )
        events = {
            c["event_id"]
            for c in reader.matching(topics.COINS_CREDITED)
            if c.get("user_id") in expected  # the topic holds every run's events
        }

    # One credit event per payment; a relay killed mid-publish may repeat one, same id.
    assert len(credited) == len(events) == 300
    returncode, report = await run_audit(stack.endpoints.database(READER))
    assert returncode == 0, report


async def test_the_wallet_killed_mid_batch_of_clawbacks_takes_every_reversal_back_once(
    stack: Stack, infra: Any
) -> None:
    """Chargebacks of half of 90 purchases over 30 users, through payment; the wallet
    dies inside its first batch of clawbacks and is restarted."""
    users = [unique("charged") for _ in range(30)]
    async with TopicReader(infra, (topics.PURCHASE_COMPLETED, topics.COINS_CLAWED_BACK)) as reader:
        bought = list((await buy(stack, infra, reader, users, 90)).values())
        await eventually(lambda: balances_become(stack, coins_by_user(bought)), timeout_s=120)
        charged_back = bought[::2]

        async def load() -> None:
            await publish(
                infra,
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

        await restart_after_crash(stack, "wallet", "wallet.clawback.before_commit", load)
        kept = coins_by_user(bought[1::2])
        expected = {user: kept.get(user, 0) for user in users}
        await eventually(lambda: balances_become(stack, expected), timeout_s=120)
        await reader.wait_for_all(
            topics.COINS_CLAWED_BACK, "payment_id", [p["payment_id"] for p in charged_back]
        )
        events = {
            c["event_id"]
            for c in reader.matching(topics.COINS_CLAWED_BACK)
            if c.get("user_id") in expected  # the topic holds every run's events
        }

    assert len(events) == len(charged_back)  # one clawback event per reversed payment
    returncode, report = await run_audit(stack.endpoints.database(READER))
    assert returncode == 0, report
