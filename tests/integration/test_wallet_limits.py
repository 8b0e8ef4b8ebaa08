"""Users' own spending limits against real Kafka and PostgreSQL."""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from services.wallet.main import create_app
from services.wallet.settings import WalletSettings
from shared import topics
from tests.integration.wallet_support import balance_of
from tests.support import TopicReader, in_process, publish, unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def wallet(
    service_settings: Callable[..., Any], operator_token: str
) -> AsyncIterator[httpx.AsyncClient]:
    # One wallet for the module: each start costs seconds of consumer-group rebalancing.
    async with in_process(
        create_app(service_settings(WalletSettings)), token=operator_token
    ) as client:
        yield client


def limit_request(user_id: str, period: str, max_coins: int | None) -> dict[str, Any]:
    return {
        "request_id": unique("limit"),
        "user_id": user_id,
        "period": period,
        "max_coins": max_coins,
        "occurred_at": "2026-11-22T12:00:00+00:00",
    }


async def test_limits_are_set_removed_and_answered_once_per_request(
    wallet: httpx.AsyncClient, infra: Any
) -> None:
    user = unique("user")
    day, week, month = (
        limit_request(user, "day", 100),
        limit_request(user, "week", 500),
        limit_request(user, "month", 2000),
    )
    no_day, lower_month = limit_request(user, "day", None), limit_request(user, "month", 1500)
    negative = limit_request(user, "week", -5)
    requests = [day, week, month, no_day, week, negative, lower_month]
    async with TopicReader(
        infra,
        (topics.SPENDING_LIMIT_UPDATED, topics.dlq(topics.SPENDING_LIMIT_REQUESTED)),
    ) as reader:
        await publish(infra, topics.SPENDING_LIMIT_REQUESTED, [(user, r) for r in requests])
        # The last request, on the same key: everything before it was handled.
        await reader.wait_for(topics.SPENDING_LIMIT_UPDATED, request_id=lower_month["request_id"])
        answers = reader.matching(topics.SPENDING_LIMIT_UPDATED, user_id=user)
        [dead] = await reader.wait_for(topics.dlq(topics.SPENDING_LIMIT_REQUESTED), user_id=user)

    assert [(a["request_id"], a["period"], a["max_coins"]) for a in answers] == [
        (r["request_id"], r["period"], r["max_coins"])
        for r in (day, week, month, no_day, lower_month)
    ]
    assert dead["request_id"] == negative["request_id"]
    assert (await balance_of(wallet, user))["spending_limits"] == {
        "day": None,
        "week": 500,
        "month": 1500,
    }


async def test_a_limit_beyond_any_coin_count_and_a_reused_request_id_are_dead_lettered(
    wallet: httpx.AsyncClient, infra: Any
) -> None:
    user = unique("user")
    day = limit_request(user, "day", 100)
    huge = limit_request(user, "week", 2**63)
    conflicting = day | {"max_coins": 5}
    month = limit_request(user, "month", 1_000)
    dlq = topics.dlq(topics.SPENDING_LIMIT_REQUESTED)
    async with TopicReader(infra, (topics.SPENDING_LIMIT_UPDATED, dlq)) as reader:
        await publish(
            infra,
            topics.SPENDING_LIMIT_REQUESTED,
            [(user, r) for r in (day, huge, day, conflicting, month)],
        )
        await reader.wait_for(topics.SPENDING_LIMIT_UPDATED, request_id=month["request_id"])
        await reader.wait_for(dlq, count=2, user_id=user)
        answers = reader.matching(topics.SPENDING_LIMIT_UPDATED, user_id=user)
        dead = [r for r in reader.records if r.topic == dlq and r.key == user.encode()]

    assert [(a["request_id"], a["max_coins"]) for a in answers] == [
        (day["request_id"], 100),
        (month["request_id"], 1_000),
    ]
    assert sorted(
        (dict(r.headers)["dlq.reason"], json.loads(r.value)["max_coins"]) for r in dead
    ) == [(b"idempotency_conflict", 5), (b"invalid_request", 2**63)]
    assert (await balance_of(wallet, user))["spending_limits"] == {
        "day": 100,
        "week": None,
        "month": 1_000,
    }


async def test_an_unknown_user_has_no_limits_and_zero_balances(wallet: httpx.AsyncClient) -> None:
    nobody = unique("nobody")
    assert await balance_of(wallet, nobody) == {
        "user_id": nobody,
        "coins": 0,
        "diamonds": 0,
        "diamonds_on_hold": 0,
        "frozen": False,
        "spending_limits": {"day": None, "week": None, "month": None},
    }
