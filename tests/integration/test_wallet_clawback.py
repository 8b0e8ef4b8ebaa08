"""Clawbacks against real Kafka and PostgreSQL: below zero and frozen, exactly once,
and a reversal that overtakes its credit."""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from services.wallet.main import create_app
from services.wallet.settings import WalletSettings
from shared import topics
from tests.integration.wallet_support import (
    as_message,
    balance_of,
    completed,
    pending_clawbacks,
    reversal,
    spend,
)
from tests.support import TopicReader, in_process, publish, unique

pytestmark = pytest.mark.integration

EVENTS = (topics.COINS_CREDITED, topics.COINS_CLAWED_BACK)


@pytest.fixture(scope="module")
async def wallet(
    service_settings: Callable[..., Any], operator_token: str
) -> AsyncIterator[httpx.AsyncClient]:
    # One wallet for the module: each start costs seconds of consumer-group rebalancing.
    async with in_process(
        create_app(service_settings(WalletSettings)), token=operator_token
    ) as client:
        yield client


async def test_a_chargeback_after_the_coins_were_spent_leaves_the_account_negative_and_frozen(
    wallet: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    user = unique("user")
    bought, later = completed(user, coins=70, bonus=7), completed(user, coins=350)
    async with TopicReader(infra, EVENTS) as reader:
        await publish(infra, topics.PURCHASE_COMPLETED, [as_message(bought)])
        await reader.wait_for(topics.COINS_CREDITED, payment_id=bought.payment_id)
        await spend(database_url, user, 50)

        await publish(infra, topics.PURCHASE_REVERSED, [as_message(reversal(bought))])
        [clawed] = await reader.wait_for(topics.COINS_CLAWED_BACK, user_id=user)
        frozen = await balance_of(wallet, user)

        await publish(infra, topics.PURCHASE_COMPLETED, [as_message(later)])
        await reader.wait_for(topics.COINS_CREDITED, payment_id=later.payment_id)
        thawed = await balance_of(wallet, user)

    assert (clawed["payment_id"], clawed["amount"], clawed["balance_after"]) == (
        bought.payment_id,
        77,
        -50,
    )
    assert (frozen["coins"], frozen["frozen"]) == (-50, True)
    assert (thawed["coins"], thawed["frozen"]) == (300, False)


async def test_a_reversal_delivered_again_claws_back_once_and_a_nonsensical_one_is_dead_lettered(
    wallet: httpx.AsyncClient, infra: Any
) -> None:
    user = unique("user")
    first, second = completed(user, coins=350, bonus=35), completed(user, coins=70)
    undo = reversal(first)
    replayed = undo.model_copy(update={"event_id": "again-" + undo.event_id})
    nonsense = reversal(second, coins=0)
    sentinel = reversal(second)  # same key, after the rest: once applied, so were they
    async with TopicReader(infra, (*EVENTS, topics.dlq(topics.PURCHASE_REVERSED))) as reader:
        await publish(
            infra,
            topics.PURCHASE_COMPLETED,
            [as_message(first), as_message(second)],
        )
        await reader.wait_for(topics.COINS_CREDITED, payment_id=second.payment_id)
        await publish(
            infra,
            topics.PURCHASE_REVERSED,
            [as_message(e) for e in (undo, undo, replayed, nonsense, sentinel)],
        )
        await reader.wait_for(topics.COINS_CLAWED_BACK, payment_id=second.payment_id)
        [dead] = await reader.wait_for(topics.dlq(topics.PURCHASE_REVERSED), user_id=user)
        clawed = reader.matching(topics.COINS_CLAWED_BACK, user_id=user)

    assert [(c["payment_id"], c["amount"], c["balance_after"]) for c in clawed] == [
        (first.payment_id, 385, 70),
        (second.payment_id, 70, 0),
    ]
    assert dead["request_id"] == nonsense.request_id
    assert (await balance_of(wallet, user))["coins"] == 0


async def test_a_reversal_that_overtakes_its_credit_waits_without_stalling_and_is_applied_with_it(
    wallet: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    user = unique("user")
    early, known = completed(user, coins=700, bonus=70), completed(user, coins=70)
    async with TopicReader(infra, EVENTS) as reader:
        await publish(infra, topics.PURCHASE_COMPLETED, [as_message(known)])
        await reader.wait_for(topics.COINS_CREDITED, payment_id=known.payment_id)
        # The reversal of `early` comes first on its partition; the one behind it must
        # not wait for `early`'s credit.
        await publish(
            infra,
            topics.PURCHASE_REVERSED,
            [as_message(reversal(early)), as_message(reversal(known))],
        )
        await reader.wait_for(topics.COINS_CLAWED_BACK, payment_id=known.payment_id)
        assert await pending_clawbacks(database_url, user) == [early.payment_id]
        assert reader.matching(topics.COINS_CLAWED_BACK, payment_id=early.payment_id) == []

        await publish(infra, topics.PURCHASE_COMPLETED, [as_message(early)])
        [clawed] = await reader.wait_for(topics.COINS_CLAWED_BACK, payment_id=early.payment_id)
        [credited] = reader.matching(topics.COINS_CREDITED, payment_id=early.payment_id)

    # Topics are not ordered against each other; the ledger below shows the order.
    assert (credited["amount"], credited["balance_after"]) == (770, 770)
    assert (clawed["amount"], clawed["balance_after"]) == (770, 0)
    assert await pending_clawbacks(database_url, user) == []
    assert (await balance_of(wallet, user))["coins"] == 0

    items = (await wallet.get(f"/v1/users/{user}/transactions")).json()["items"]
    # Newest first: the waiting clawback right after the credit it waited for.
    assert [(i["kind"], i["amount"], i["balance_after"]) for i in items] == [
        ("clawback", -70, 0),
        ("clawback", -700, 70),
        ("purchase", 70, 770),
        ("purchase", 700, 700),
        ("clawback", -70, 0),
        ("purchase", 70, 70),
    ]


async def test_reversals_racing_their_credits_are_each_applied_exactly_once(
    wallet: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    """Credits and reversals of the same payments published at the same moment on two
    topics: whichever the wallet sees first, every purchase ends clawed back once."""
    users = [unique("racer") for _ in range(20)]
    purchases = [completed(user, coins=70, bonus=7) for user in users]
    async with TopicReader(infra, EVENTS) as reader:
        await asyncio.gather(
            publish(
                infra,
                topics.PURCHASE_REVERSED,
                [as_message(reversal(p)) for p in purchases],
            ),
            publish(infra, topics.PURCHASE_COMPLETED, list(map(as_message, purchases))),
        )
        await reader.wait_for_all(
            topics.COINS_CLAWED_BACK, "payment_id", [p.payment_id for p in purchases]
        )
        clawed = [reader.matching(topics.COINS_CLAWED_BACK, user_id=user) for user in users]

    assert all(len(mine) == 1 and mine[0]["balance_after"] == 0 for mine in clawed)
    for user in users:
        assert (await balance_of(wallet, user))["coins"] == 0
        assert await pending_clawbacks(database_url, user) == []
