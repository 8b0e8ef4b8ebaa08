"""The gift saga, gifting and wallet in this process, against real Kafka and PostgreSQL."""

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from devstack import Endpoints
from services.gifting.main import create_app as create_gifting
from services.gifting.settings import GiftingSettings
from services.wallet.main import create_app as create_wallet
from services.wallet.settings import WalletSettings
from shared import topics
from tests.integration.gifting_support import (
    Clock,
    fund,
    gift_request,
    one_outcome,
    outcomes_of,
    send_gifts,
)
from tests.integration.wallet_support import as_message, balance_of, completed, reversal
from tests.support import TopicReader, in_process, publish, run_audit, unique

pytestmark = pytest.mark.integration

MAX_QUANTITY = 50
READ = (
    topics.GIFT_SENT,
    topics.GIFT_REJECTED,
    topics.COINS_CREDITED,
    topics.COINS_DEBITED,
    topics.DIAMONDS_CREDITED,
    topics.COINS_CLAWED_BACK,
    topics.SPENDING_LIMIT_UPDATED,
    topics.dlq(topics.GIFT_REQUESTED),
)


@dataclass
class Saga:
    wallet: httpx.AsyncClient
    gifting: httpx.AsyncClient
    clock: Clock
    infra: Endpoints


@pytest.fixture(scope="module")
async def saga(
    service_settings: Callable[..., Any], infra: Any, operator_token: str
) -> AsyncIterator[Saga]:
    # One of each for the module: each start costs seconds of consumer-group rebalancing.
    clock = Clock()
    wallet_app = create_wallet(service_settings(WalletSettings), clock)
    gifting_app = create_gifting(service_settings(GiftingSettings, max_quantity=MAX_QUANTITY))
    async with (
        in_process(wallet_app, token=operator_token) as wallet,
        in_process(gifting_app) as gifting,  # its catalog and leaderboards are open
    ):
        yield Saga(wallet, gifting, clock, infra)


@pytest.fixture
async def reader(infra: Any) -> AsyncIterator[TopicReader]:
    async with TopicReader(infra, READ) as reader:
        yield reader


async def test_a_gift_moves_coins_to_revenue_and_diamonds_to_the_creator(
    saga: Saga, reader: TopicReader
) -> None:
    sender, creator = unique("viewer"), unique("creator")
    await fund(saga.infra, reader, {sender: 700})
    request = gift_request(sender, creator, "love_bang", 3)
    await send_gifts(saga.infra, [request])

    topic, sent = await one_outcome(reader, request)
    [debited] = await reader.wait_for(topics.COINS_DEBITED, request_id=request["request_id"])
    [credited] = await reader.wait_for(topics.DIAMONDS_CREDITED, request_id=request["request_id"])

    assert topic == topics.GIFT_SENT
    assert {k: sent[k] for k in ("sender_id", "creator_id", "gift_id", "quantity")} == {
        "sender_id": sender,
        "creator_id": creator,
        "gift_id": "love_bang",
        "quantity": 3,
    }
    assert (sent["coins"], sent["diamonds"], sent["stream_id"]) == (
        75,
        "37.5",
        request["stream_id"],
    )
    assert (debited["user_id"], debited["amount"], debited["balance_after"]) == (sender, 75, 625)
    assert (credited["user_id"], credited["amount"], credited["balance_after"]) == (
        creator,
        "37.5",
        "37.5",
    )
    assert (await balance_of(saga.wallet, sender))["coins"] == 625
    assert (await balance_of(saga.wallet, creator))["diamonds"] == "37.5"
    history = (await saga.wallet.get(f"/v1/users/{creator}/transactions")).json()["items"]
    assert [(i["kind"], i["account"], i["amount"]) for i in history] == [
        ("gift", "user_diamonds", "37.5")
    ]


async def test_one_two_and_three_roses_give_half_one_and_one_and_a_half_diamonds(
    saga: Saga, reader: TopicReader
) -> None:
    sender, creator = unique("viewer"), unique("creator")
    await fund(saga.infra, reader, {sender: 70})
    requests = [gift_request(sender, creator, "rose", n) for n in (1, 2, 3)]
    await send_gifts(saga.infra, requests)

    found = await outcomes_of(reader, requests)
    sent = [found[r["request_id"]] for r in requests]
    credited = await reader.wait_for_all(
        topics.DIAMONDS_CREDITED, "request_id", [r["request_id"] for r in requests]
    )

    assert [[(t, b["diamonds"]) for t, b in outcome] for outcome in sent] == [
        [(topics.GIFT_SENT, "0.5")],
        [(topics.GIFT_SENT, 1)],
        [(topics.GIFT_SENT, "1.5")],
    ]
    assert [credited[r["request_id"]]["balance_after"] for r in requests] == ["0.5", "1.5", 3]
    assert (await balance_of(saga.wallet, creator))["diamonds"] == 3


async def test_every_refusal_reason_reaches_kafka(
    saga: Saga, reader: TopicReader, database_url: str
) -> None:
    sender, creator, poor, frozen = (unique(p) for p in ("viewer", "creator", "poor", "frozen"))
    await _add_gift(database_url, "retired_gift", coins=3, active=False)
    bought = completed(frozen, coins=70)
    await publish(saga.infra, topics.PURCHASE_COMPLETED, [as_message(bought)])
    await fund(saga.infra, reader, {sender: 350, poor: 4})
    await reader.wait_for(topics.COINS_CREDITED, payment_id=bought.payment_id)
    # The frozen user spends everything, then a chargeback takes the 70 coins back.
    spent_all = gift_request(frozen, creator, "panda", 14)
    await send_gifts(saga.infra, [spent_all])
    assert (await one_outcome(reader, spent_all))[0] == topics.GIFT_SENT
    await publish(saga.infra, topics.PURCHASE_REVERSED, [as_message(reversal(bought))])
    await reader.wait_for(topics.COINS_CLAWED_BACK, payment_id=bought.payment_id)
    await _set_limit(saga, reader, sender, "day", 300)

    cases = {
        "unknown_gift": gift_request(sender, creator, "no_such_gift"),
        "unknown_gift (retired)": gift_request(sender, creator, "retired_gift"),
        "invalid_quantity (0)": gift_request(sender, creator, "rose", 0),
        "invalid_quantity (-1)": gift_request(sender, creator, "rose", -1),
        "invalid_quantity (max + 1)": gift_request(sender, creator, "rose", MAX_QUANTITY + 1),
        "invalid_quantity (beyond bigint)": gift_request(sender, creator, "rose", 2**63),
        "invalid_quantity (below bigint)": gift_request(sender, creator, "rose", -(2**63) - 1),
        "self_gift": gift_request(sender, sender),
        "invalid_request (no stream, no video)": gift_request(sender, creator, stream_id=None),
        "invalid_request (stream and video)": gift_request(sender, creator, video_id=unique("v")),
        "insufficient_coins": gift_request(poor, creator, "panda"),
        "spending_limit_exceeded": gift_request(sender, creator, "sun_cream", 7),
        "account_frozen": gift_request(frozen, creator, "rose"),
    }
    await send_gifts(saga.infra, list(cases.values()))
    found = await outcomes_of(reader, list(cases.values()))

    assert {
        case: [(topic, body["reason"]) for topic, body in found[r["request_id"]]]
        for case, r in cases.items()
    } == {case: [(topics.GIFT_REJECTED, case.split(" ")[0])] for case in cases}
    # Nothing moved: the refused senders keep their coins.
    assert [(await balance_of(saga.wallet, u))["coins"] for u in (sender, poor, frozen)] == [
        350,
        4,
        -70,
    ]


async def test_a_duplicate_request_debits_once_and_has_one_outcome(
    saga: Saga, reader: TopicReader
) -> None:
    sender, creator = unique("viewer"), unique("creator")
    await fund(saga.infra, reader, {sender: 70})
    request = gift_request(sender, creator, "panda", 2)
    later = gift_request(sender, creator, "rose")  # same key: handled after the duplicates
    conflicting = {**request, "quantity": 3}
    await send_gifts(saga.infra, [request, request])
    await one_outcome(reader, request)
    await send_gifts(saga.infra, [request, conflicting, later])
    await one_outcome(reader, later)
    [dead] = await reader.wait_for(
        topics.dlq(topics.GIFT_REQUESTED), request_id=request["request_id"], quantity=3
    )

    assert len(reader.matching(topics.GIFT_SENT, request_id=request["request_id"])) == 1
    assert len(reader.matching(topics.COINS_DEBITED, request_id=request["request_id"])) == 1
    assert (await balance_of(saga.wallet, sender))["coins"] == 70 - 10 - 1
    assert (await balance_of(saga.wallet, creator))["diamonds"] == "5.5"
    headers = _dlq_headers(reader, dead)
    assert headers["dlq.reason"] == "idempotency_conflict"


async def test_bad_gift_requests_are_dead_lettered_and_the_next_is_answered(
    saga: Saga, reader: TopicReader
) -> None:
    sender, creator = unique("viewer"), unique("creator")
    await fund(saga.infra, reader, {sender: 70})
    missing = {k: v for k, v in gift_request(sender, creator).items() if k != "gift_id"}
    wrong_type = {**gift_request(sender, creator), "quantity": "2"}
    after = gift_request(sender, creator)
    await publish(
        saga.infra,
        topics.GIFT_REQUESTED,
        [(sender, b"{not json"), (sender, missing), (sender, wrong_type), (sender, after)],
    )
    assert (await one_outcome(reader, after))[0] == topics.GIFT_SENT
    dead = await reader.wait_for_all(
        topics.dlq(topics.GIFT_REQUESTED),
        "request_id",
        [missing["request_id"], wrong_type["request_id"]],
    )
    assert set(dead) == {missing["request_id"], wrong_type["request_id"]}


async def test_many_concurrent_gifts_never_overspend_and_all_are_answered(
    saga: Saga, reader: TopicReader
) -> None:
    """70 coins, 40 Pandas (5 coins each) at once: 14 are sent, 26 refused, 0 left."""
    sender, creator = unique("viewer"), unique("creator")
    await fund(saga.infra, reader, {sender: 70})
    requests = [gift_request(sender, creator, "panda") for _ in range(40)]
    await send_gifts(saga.infra, requests)

    found = await outcomes_of(reader, requests)

    assert all(len(outcome) == 1 for outcome in found.values())
    topics_seen = [found[r["request_id"]][0][0] for r in requests]
    assert topics_seen == [topics.GIFT_SENT] * 14 + [topics.GIFT_REJECTED] * 26
    assert {found[r["request_id"]][0][1].get("reason") for r in requests[14:]} == {
        "insufficient_coins"
    }
    balance = await balance_of(saga.wallet, sender)
    assert balance["coins"] == 0
    assert (await balance_of(saga.wallet, creator))["diamonds"] == 35


async def test_a_hot_creator_gets_gifts_from_a_thousand_senders_exactly(
    saga: Saga, reader: TopicReader
) -> None:
    creator, stream = unique("star"), unique("stream")
    senders = [unique("fan") for _ in range(1000)]
    await fund(saga.infra, reader, dict.fromkeys(senders, 70))
    gifts = [("rose", 1), ("panda", 5), ("love_bang", 25)]
    requests = [
        gift_request(s, creator, gifts[n % 3][0], 1 + n % 2, stream_id=stream)
        for n, s in enumerate(senders)
    ]
    await send_gifts(saga.infra, requests)

    found = await outcomes_of(reader, requests, timeout_s=120)

    coins = sum(gifts[n % 3][1] * (1 + n % 2) for n in range(len(senders)))
    assert all([topic for topic, _ in o] == [topics.GIFT_SENT] for o in found.values())
    assert (await balance_of(saga.wallet, creator))["diamonds"] == _wire(Decimal(coins) / 2)
    board = (await saga.gifting.get(f"/v1/streams/{stream}/leaderboard?limit=100")).json()
    assert len(board["entries"]) == 100
    assert board["entries"][0]["coins"] == 50  # two Love Bangs
    assert sum(e["coins"] for e in board["entries"]) == 100 * 50


async def test_the_leaderboard_ranks_a_streams_senders_by_coins(
    saga: Saga, reader: TopicReader
) -> None:
    creator, stream = unique("creator"), unique("stream")
    big, mid, small = (unique(p) for p in ("big", "mid", "small"))
    await fund(saga.infra, reader, {big: 700, mid: 700, small: 700})
    requests = [
        gift_request(small, creator, "rose", 3, stream_id=stream),
        gift_request(big, creator, "sun_cream", 2, stream_id=stream),
        gift_request(mid, creator, "love_bang", stream_id=stream),
        gift_request(big, creator, "rose", stream_id=stream),
        gift_request(mid, creator, "concert", 2, stream_id=stream),  # refused: no coins
        gift_request(small, creator, "panda", stream_id=None, video_id=unique("video")),
    ]
    await send_gifts(saga.infra, requests)
    await outcomes_of(reader, requests)

    board = (await saga.gifting.get(f"/v1/streams/{stream}/leaderboard")).json()
    top_two = (await saga.gifting.get(f"/v1/streams/{stream}/leaderboard?limit=2")).json()
    nobody = (await saga.gifting.get(f"/v1/streams/{unique('empty')}/leaderboard")).json()
    bad = await saga.gifting.get(f"/v1/streams/{stream}/leaderboard?limit=0")

    assert board == {
        "stream_id": stream,
        "entries": [
            {"sender_id": big, "coins": 101},
            {"sender_id": mid, "coins": 25},
            {"sender_id": small, "coins": 3},
        ],
    }
    assert top_two["entries"] == board["entries"][:2]
    assert nobody["entries"] == []
    assert bad.status_code == 400


async def test_the_catalog_follows_the_gifts_table(saga: Saga, database_url: str) -> None:
    gift_id = unique("sparkle")
    await _add_gift(database_url, gift_id, coins=7, active=True)
    listed = (await saga.gifting.get("/v1/gifts")).json()["gifts"]
    await _add_gift(database_url, gift_id, coins=7, active=False)
    after = (await saga.gifting.get("/v1/gifts")).json()["gifts"]

    assert {"gift_id": gift_id, "name": gift_id, "coins": 7} in listed
    assert {"gift_id": "rose", "name": "Rose", "coins": 1} in listed
    assert gift_id not in {g["gift_id"] for g in after}


@pytest.mark.parametrize(
    ("period", "last_moment", "next_moment"),
    [
        ("day", "2026-11-24T23:59:59.999+00:00", "2026-11-25T00:00:00+00:00"),
        # Sunday to Monday: a new ISO week in the same month.
        ("week", "2026-11-29T23:59:59.999+00:00", "2026-11-30T00:00:00+00:00"),
        # Monday night to Tuesday: a new month in the same week.
        ("month", "2026-11-30T23:59:59.999+00:00", "2026-12-01T00:00:00+00:00"),
    ],
)
async def test_a_spending_limit_holds_until_its_period_ends(
    saga: Saga, reader: TopicReader, period: str, last_moment: str, next_moment: str
) -> None:
    """Limit 10 coins: 10 pass, the 11th is refused, and at the next period it passes."""
    sender, creator = unique("viewer"), unique("creator")
    await fund(saga.infra, reader, {sender: 70})
    await _set_limit(saga, reader, sender, period, 10)
    try:
        saga.clock.now = datetime.fromisoformat(last_moment)
        reached = gift_request(sender, creator, "rose", 10)
        await send_gifts(saga.infra, [reached])
        assert (await one_outcome(reader, reached))[0] == topics.GIFT_SENT
        over = gift_request(sender, creator, "rose")
        await send_gifts(saga.infra, [over])
        assert (await one_outcome(reader, over))[1]["reason"] == "spending_limit_exceeded"

        saga.clock.now = datetime.fromisoformat(next_moment)
        renewed = gift_request(sender, creator, "rose", 10)
        await send_gifts(saga.infra, [renewed])
        assert (await one_outcome(reader, renewed))[0] == topics.GIFT_SENT
    finally:
        saga.clock.now = None
    assert (await balance_of(saga.wallet, sender))["coins"] == 50


async def test_the_audit_passes_after_the_gifts(saga: Saga, reader_url: str) -> None:
    returncode, report = await run_audit(reader_url)  # as the operators' read-only role
    assert returncode == 0, report
    assert "coins spent on gifts = diamonds issued" in report


async def _add_gift(database_url: str, gift_id: str, *, coins: int, active: bool) -> None:
    """What an operator does to change the catalog: plain SQL on the gifts table."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            INSERT INTO gifting.gifts (gift_id, name, coins, active) VALUES ($1, $1, $2, $3)
            ON CONFLICT (gift_id) DO UPDATE SET coins = $2, active = $3
            """,
            gift_id,
            coins,
            active,
        )
    finally:
        await conn.close()


async def _set_limit(
    saga: Saga, reader: TopicReader, user: str, period: str, max_coins: int
) -> None:
    request = {
        "request_id": unique("limit"),
        "user_id": user,
        "period": period,
        "max_coins": max_coins,
        "occurred_at": "2026-11-22T12:00:00+00:00",
    }
    await publish(saga.infra, topics.SPENDING_LIMIT_REQUESTED, [(user, request)])
    await reader.wait_for(topics.SPENDING_LIMIT_UPDATED, request_id=request["request_id"])


def _wire(diamonds: Decimal) -> int | str:
    return int(diamonds) if diamonds == int(diamonds) else str(diamonds)


def _dlq_headers(reader: TopicReader, body: dict[str, Any]) -> dict[str, str]:
    value = json.dumps(body).encode()  # a dead letter keeps the value as published
    for record in reader.records:
        if record.topic == topics.dlq(topics.GIFT_REQUESTED) and record.value == value:
            return {name: value.decode() for name, value in record.headers}
    raise AssertionError("dead letter not found")
