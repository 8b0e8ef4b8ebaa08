"""The whole journey through the four services as processes: viewers buy coins, send
gifts to creators, creators cash out — with refusals and flaky providers on both
sides — then every balance, every outcome and the ledger audit are checked."""

from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from shared import topics
from shared.db_roles import READER
from tests.e2e.conftest import Stack
from tests.e2e.support import balances, gift, outcomes_of, register_creators
from tests.support import TopicReader, eventually, publish, purchase_request, run_audit, unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WATCHED = (
    topics.PURCHASE_COMPLETED,
    topics.PURCHASE_FAILED,
    topics.GIFT_SENT,
    topics.GIFT_REJECTED,
    topics.PAYOUT_COMPLETED,
    topics.PAYOUT_FAILED,
)


def payout(creator: str, diamonds: int) -> dict[str, Any]:
    return {
        "request_id": unique("payout"),
        "creator_id": creator,
        "diamonds": diamonds,
        "occurred_at": "2026-11-22T11:00:00+00:00",
    }


async def step(
    infra: Any, reader: TopicReader, topic: str, key: str, requests: list[dict[str, Any]]
) -> dict[str, list[tuple[str, Any]]]:
    """Publish requests as an upstream app does; each one's outcomes as (topic, reason or
    body)."""
    await publish(infra, topic, [(r[key], r) for r in requests])
    found = await outcomes_of(reader, WATCHED, [r["request_id"] for r in requests])
    return {
        request_id: [(t, b.get("reason", b)) for t, b in events]
        for request_id, events in found.items()
    }


def outcome(found: dict[str, list[tuple[str, Any]]], request: dict[str, Any]) -> tuple[str, Any]:
    [only] = found[request["request_id"]]  # exactly one outcome per request
    return only


async def test_purchase_gifts_and_payouts_end_in_exact_balances_and_a_clean_audit(
    stack: Stack, infra: Any
) -> None:
    u1, u2, u3, u4 = (unique(f"viewer{n}") for n in range(1, 5))
    c1, c2, c3, c4 = (unique(f"creator{n}") for n in range(1, 5))
    stream = unique("live")
    await register_creators(
        infra,
        stack.endpoints.database_url,
        {
            c1: (True, "po_bank_ok", "USD"),
            c2: (True, "po_bank_flaky", "EUR"),
            c3: (True, "po_bank_rejected", "USD"),
            c4: (False, "po_bank_ok", "USD"),
        },
    )
    async with TopicReader(infra, WATCHED) as reader:
        buys = [
            purchase_request(
                user_id=u1, package_id="coins_17500", amount=24999, method="pm_card_flaky"
            ),
            purchase_request(user_id=u2, package_id="coins_7000", amount=9999),
            purchase_request(
                user_id=u3, package_id="coins_700", amount=999, method="pm_card_declined"
            ),
            purchase_request(user_id=u4, package_id="coins_350", amount=499),
        ]
        bought = await step(infra, reader, topics.PURCHASE_REQUESTED, "user_id", buys)
        await eventually(lambda: _coins_are(stack, {u1: 17500, u2: 7000, u4: 350}))

        gifts = [
            gift(u1, c1, "interstellar", 1, stream),  # 10,000 coins -> 5,000 diamonds
            gift(u2, c2, "concert", 9, stream),  # 4,500 -> 2,250
            gift(u1, c3, "concert", 8, stream),  # 4,000 -> 2,000
            gift(u4, c4, "panda", 10, stream),  # 50 -> 25
            gift(u2, c1, "rose", 3, stream),  # 3 -> 1.5
            gift(u4, c1, "universe", 1, stream),  # insufficient_coins
            gift(u2, u2, "rose", 1, stream),  # self_gift
            gift(u3, c1, "rose", 1, stream),  # insufficient_coins: the card was declined
        ]
        sent = await step(infra, reader, topics.GIFT_REQUESTED, "sender_id", gifts)

        payouts = [
            payout(c1, 4000),  # $20.00
            payout(c1, 2000),  # only 1,001.5 left: insufficient_diamonds
            payout(c1, 100),  # below_minimum
            payout(c2, 2000),  # flaky bank, reconciled: 9.25 EUR
            payout(c3, 2000),  # rejected by the bank: released
            payout(c4, 25),  # not_verified
        ]
        paid = await step(infra, reader, topics.PAYOUT_REQUESTED, "creator_id", payouts)

    assert [outcome(bought, r)[0] for r in buys] == [
        topics.PURCHASE_COMPLETED,
        topics.PURCHASE_COMPLETED,
        topics.PURCHASE_FAILED,
        topics.PURCHASE_COMPLETED,
    ]
    assert outcome(bought, buys[2])[1] == "payment_declined"
    assert [outcome(sent, g)[0] for g in gifts[:5]] == [topics.GIFT_SENT] * 5
    assert [outcome(sent, g)[1] for g in gifts[5:]] == [
        "insufficient_coins",
        "self_gift",
        "insufficient_coins",
    ]
    assert [outcome(sent, g)[1]["diamonds"] for g in gifts[:5]] == [5000, 2250, 2000, 25, "1.5"]
    completed = [outcome(paid, p)[1] for p in (payouts[0], payouts[3])]
    assert [c["amount"] for c in completed] == [
        {"amount_minor": 2000, "currency": "USD"},
        {"amount_minor": 925, "currency": "EUR"},
    ]
    assert [outcome(paid, p)[1] for p in payouts[1:3] + payouts[4:]] == [
        "insufficient_diamonds",
        "below_minimum",
        "provider_rejected",
        "not_verified",
    ]

    expected: dict[str, tuple[int, Decimal]] = {
        u1: (3500, Decimal(0)),
        u2: (2497, Decimal(0)),
        u3: (0, Decimal(0)),
        u4: (300, Decimal(0)),
        c1: (0, Decimal("1001.5")),
        c2: (0, Decimal(250)),
        c3: (0, Decimal(2000)),  # released after the bank's rejection
        c4: (0, Decimal(25)),
    }
    await eventually(lambda: _balances_are(stack, expected))
    assert await _bank_transfers(stack, completed[1]["payout_id"]) == [("paid", 1)]
    returncode, report = await run_audit(stack.endpoints.database(READER))
    assert returncode == 0, report


async def _coins_are(stack: Stack, expected: dict[str, int]) -> bool:
    found = await balances(stack, expected)
    return all(found[user]["coins"] == coins for user, coins in expected.items())


async def _balances_are(stack: Stack, expected: dict[str, tuple[int, Decimal]]) -> bool:
    found = await balances(stack, expected)
    return all(
        (b["coins"], Decimal(str(b["diamonds"])), b["diamonds_on_hold"]) == (*expected[u], 0)
        for u, b in found.items()
    )


async def _bank_transfers(stack: Stack, payout_id: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(stack.endpoints.database_url)
    try:
        rows = await conn.fetch(
            "SELECT outcome, calls FROM payout.simulated_bank_transfers WHERE payout_id = $1",
            payout_id,
        )
    finally:
        await conn.close()
    return [(row["outcome"], row["calls"]) for row in rows]
