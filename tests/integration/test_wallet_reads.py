"""The wallet's HTTP reads: balances and the paged history, newest first."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from services.wallet.main import create_app
from services.wallet.settings import WalletSettings
from shared import topics
from tests.integration.wallet_support import as_message, completed, reversal
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


async def pages(wallet: httpx.AsyncClient, user: str, limit: int) -> list[list[dict[str, Any]]]:
    """Follow next_cursor from the first page to the last."""
    found, cursor = [], None
    while True:
        params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
        response = await wallet.get(f"/v1/users/{user}/transactions", params=params)
        assert response.status_code == 200
        body = response.json()
        found.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


async def test_history_pages_newest_first_and_tells_purchased_from_bonus_coins(
    wallet: httpx.AsyncClient, infra: Any
) -> None:
    user = unique("user")
    purchases = [
        completed(user, coins=70),
        completed(user, coins=350, bonus=35),
        completed(user, coins=70),
        completed(user, coins=700, bonus=70),
    ]
    async with TopicReader(infra, (topics.COINS_CREDITED, topics.COINS_CLAWED_BACK)) as reader:
        await publish(infra, topics.PURCHASE_COMPLETED, list(map(as_message, purchases)))
        await reader.wait_for(topics.COINS_CREDITED, payment_id=purchases[-1].payment_id)
        await publish(infra, topics.PURCHASE_REVERSED, [as_message(reversal(purchases[1]))])
        await reader.wait_for(topics.COINS_CLAWED_BACK, user_id=user)

    [everything] = await pages(wallet, user, limit=200)
    assert [(i["kind"], i["coin_source"], i["amount"], i["balance_after"]) for i in everything] == [
        ("clawback", "bonus", -35, 910),
        ("clawback", "purchased", -350, 945),
        ("purchase", "bonus", 70, 1295),
        ("purchase", "purchased", 700, 1225),
        ("purchase", "purchased", 70, 525),
        ("purchase", "bonus", 35, 455),
        ("purchase", "purchased", 350, 420),
        ("purchase", "purchased", 70, 70),
    ]
    assert {(i["account"], i["counter_account"], i["coin_source"]) for i in everything} == {
        ("user_coins", "coin_issuance", "purchased"),
        ("user_coins", "bonus_issuance", "bonus"),
    }
    assert everything[0]["request_id"] != everything[2]["request_id"]  # the chargeback's
    # Pages of 3 end short; pages of 4 end exactly, and the last one says so (no empty
    # page after it); pages of 1 walk every entry.
    for limit, sizes in ((3, [3, 3, 2]), (4, [4, 4]), (1, [1] * 8)):
        walked = await pages(wallet, user, limit)
        assert [len(page) for page in walked] == sizes
        assert [item for page in walked for item in page] == everything


async def test_history_refuses_a_bad_limit_or_cursor(wallet: httpx.AsyncClient) -> None:
    for params in ({"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"cursor": "abc"}):
        response = await wallet.get("/v1/users/anyone/transactions", params=params)
        assert response.status_code == 400
        assert response.json()["error"] == "bad_request"


async def test_an_unknown_user_has_an_empty_history(wallet: httpx.AsyncClient) -> None:
    response = await wallet.get(f"/v1/users/{unique('nobody')}/transactions")
    assert response.json() == {"items": [], "next_cursor": None}
