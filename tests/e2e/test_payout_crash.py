"""Payouts with the payout service or the wallet SIGKILLed between the steps of a
cash-out: every payout ends once, the bank pays each at most once, every hold is
posted or voided, and the audit passes."""

from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from shared import topics
from shared.db_roles import READER
from tests.e2e.conftest import Stack
from tests.e2e.support import balances, outcomes_of, register_creators, restart_after_crash
from tests.integration.wallet_support import give_diamonds
from tests.support import TopicReader, eventually, publish, run_audit, unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

METHODS = ("po_bank_ok", "po_bank_flaky", "po_bank_rejected")


@pytest.mark.parametrize(
    ("service", "crash_at"),
    [
        ("payout", "payout.requests.before_commit"),
        # Diamonds held, the process dies before calling the bank, and after it.
        ("payout", "payout.held"),
        ("payout", "payout.paid"),
        ("wallet", "wallet.hold.before_commit"),
        ("wallet", "wallet.hold_close.before_commit"),
    ],
)
async def test_a_service_killed_mid_payout_pays_each_payout_at_most_once(
    stack: Stack, infra: Any, service: str, crash_at: str
) -> None:
    creators = {unique("star"): METHODS[n % 3] for n in range(12)}
    for creator in creators:
        await give_diamonds(stack.endpoints.database_url, creator, 5_000)
    await register_creators(
        infra,
        stack.endpoints.database_url,
        {creator: (True, method, "USD") for creator, method in creators.items()},
    )
    # Three payouts of 2,000 each: the third finds only 1,000 left.
    requests: list[dict[str, Any]] = [
        {
            "request_id": unique("payout"),
            "creator_id": creator,
            "diamonds": 2_000,
            "occurred_at": "2026-11-22T15:00:00+00:00",
        }
        for _ in range(3)
        for creator in creators
    ]
    async with TopicReader(infra, (topics.PAYOUT_COMPLETED, topics.PAYOUT_FAILED)) as reader:

        async def load() -> None:
            await publish(
                infra,
                topics.PAYOUT_REQUESTED,
                [(r["creator_id"], r) for r in requests],
            )

        await restart_after_crash(stack, service, crash_at, load)
        found = await outcomes_of(
            reader,
            (topics.PAYOUT_COMPLETED, topics.PAYOUT_FAILED),
            [r["request_id"] for r in requests],
        )

    assert all(len(events) == 1 for events in found.values())  # one outcome each
    by_creator: dict[str, list[str]] = {}
    for request in requests:
        [(topic, body)] = found[request["request_id"]]
        by_creator.setdefault(request["creator_id"], []).append(
            "paid" if topic == topics.PAYOUT_COMPLETED else body["reason"]
        )
    for creator, method in creators.items():
        if method == "po_bank_rejected":
            # The third is refused while the first two still hold, or rejected after.
            assert by_creator[creator][:2] == ["provider_rejected"] * 2, creator
            assert by_creator[creator][2] in ("provider_rejected", "insufficient_diamonds")
        else:
            assert by_creator[creator] == ["paid", "paid", "insufficient_diamonds"], creator
    left = {c: Decimal(5_000 if m == "po_bank_rejected" else 1_000) for c, m in creators.items()}
    await eventually(lambda: _diamonds_are(stack, left), timeout_s=60)
    paid_ids = [
        b["payout_id"]
        for events in found.values()
        for t, b in events
        if t == topics.PAYOUT_COMPLETED
    ]
    assert await _bank_outcomes(stack, paid_ids) == ["paid"] * len(paid_ids)
    returncode, report = await run_audit(stack.endpoints.database(READER))
    assert returncode == 0, report


async def _diamonds_are(stack: Stack, expected: dict[str, Decimal]) -> bool:
    found = await balances(stack, expected)
    return all(
        Decimal(str(b["diamonds"])) == expected[c] and b["diamonds_on_hold"] == 0
        for c, b in found.items()
    )


async def _bank_outcomes(stack: Stack, payout_ids: list[str]) -> list[str]:
    """What the bank did per payout id: one row per payout it ever received."""
    conn = await asyncpg.connect(stack.endpoints.database_url)
    try:
        rows = await conn.fetch(
            "SELECT outcome FROM payout.simulated_bank_transfers WHERE payout_id = ANY($1)",
            payout_ids,
        )
    finally:
        await conn.close()
    return [row["outcome"] for row in rows]
