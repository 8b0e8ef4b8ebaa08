"""The wallet against real Kafka and PostgreSQL: exactly-once credits, dead letters."""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from services.wallet.main import create_app
from services.wallet.settings import WalletSettings
from shared import topics
from tests.integration.wallet_support import as_message, coins_of, completed
from tests.support import TopicReader, in_process, publish, unique

pytestmark = pytest.mark.integration


@pytest.fixture
async def wallet(
    service_settings: Callable[..., Any], operator_token: str
) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(
        create_app(service_settings(WalletSettings)), token=operator_token
    ) as client:
        yield client


async def test_a_purchase_delivered_twice_is_credited_once(
    wallet: httpx.AsyncClient, infra: Any
) -> None:
    user = unique("user")
    first = completed(user, coins=70, bonus=7)
    # Same payment again under a new event id: the ledger key must catch what the inbox can't.
    replayed = first.model_copy(update={"event_id": "other-" + first.event_id})
    sentinel = completed(user, coins=350)  # same key, so it is processed after the duplicates
    async with TopicReader(infra, (topics.COINS_CREDITED,)) as reader:
        await publish(
            infra,
            topics.PURCHASE_COMPLETED,
            [as_message(first), as_message(first), as_message(replayed), as_message(sentinel)],
        )
        await reader.wait_for(topics.COINS_CREDITED, payment_id=sentinel.payment_id)
        credits = reader.matching(topics.COINS_CREDITED, user_id=user)

    assert await coins_of(wallet, user) == 70 + 7 + 350
    assert [(c["payment_id"], c["amount"], c["balance_after"]) for c in credits] == [
        (first.payment_id, 77, 77),
        (sentinel.payment_id, 350, 427),
    ]
    history = (await wallet.get(f"/v1/users/{user}/transactions")).json()["items"]
    assert [item["amount"] for item in history] == [350, 7, 70]


async def test_bad_messages_go_to_the_dead_letter_topic_and_the_next_one_is_processed(
    wallet: httpx.AsyncClient, infra: Any
) -> None:
    user = unique("user")
    garbage = f"not json {user}".encode()
    missing_field = json.loads(completed(user).model_dump_json())
    del missing_field["payment_id"]
    missing_field["marker"] = user
    after = completed(user, coins=700)
    async with TopicReader(
        infra, (topics.dlq(topics.PURCHASE_COMPLETED), topics.COINS_CREDITED)
    ) as reader:
        await publish(
            infra,
            topics.PURCHASE_COMPLETED,
            [(user, garbage), (user, missing_field), as_message(after)],
        )
        await reader.wait_for(topics.COINS_CREDITED, payment_id=after.payment_id)
        await reader.wait_for(topics.dlq(topics.PURCHASE_COMPLETED), marker=user)
        dead = [
            record
            for record in reader.records
            if record.topic == topics.dlq(topics.PURCHASE_COMPLETED) and record.key == user.encode()
        ]

    assert await coins_of(wallet, user) == 700
    assert dead[0].value == garbage  # value unchanged
    headers = [dict((k, v.decode()) for k, v in record.headers) for record in dead]
    assert [h["dlq.reason"] for h in headers] == ["invalid_json", "invalid_message"]
    assert "payment_id" in headers[1]["dlq.error"]
    for h in headers:
        assert h["dlq.topic"] == topics.PURCHASE_COMPLETED
        assert h["dlq.service"] == "wallet"
        assert int(h["dlq.partition"]) >= 0 and int(h["dlq.offset"]) >= 0
    assert int(headers[1]["dlq.offset"]) == int(headers[0]["dlq.offset"]) + 1


async def test_a_nonsensical_purchase_is_dead_lettered_alone_and_its_batch_neighbours_credited(
    service_settings: Callable[..., Any], infra: Any, operator_token: str
) -> None:
    """Published while no wallet runs, so the wallet fetches them as one batch: the two
    poisoned events fail the batch's transaction, halving isolates each of them."""
    user = unique("user")
    goods = [completed(user, coins=70), completed(user, coins=350, bonus=35), completed(user)]
    zero, negative_bonus = completed(user, coins=0), completed(user, coins=70, bonus=-7)
    batch = [goods[0], zero, goods[1], negative_bonus, goods[2]]
    async with TopicReader(
        infra, (topics.dlq(topics.PURCHASE_COMPLETED), topics.COINS_CREDITED)
    ) as reader:
        await publish(infra, topics.PURCHASE_COMPLETED, list(map(as_message, batch)))
        wallet_app = create_app(service_settings(WalletSettings))
        async with in_process(wallet_app, token=operator_token) as wallet:
            await reader.wait_for(topics.COINS_CREDITED, payment_id=goods[2].payment_id)
            await reader.wait_for(topics.dlq(topics.PURCHASE_COMPLETED), 2, user_id=user)
            assert await coins_of(wallet, user) == 70 + 385 + 70
        credited = reader.matching(topics.COINS_CREDITED, user_id=user)
        dead = [
            r
            for r in reader.records
            if r.topic == topics.dlq(topics.PURCHASE_COMPLETED) and r.key == user.encode()
        ]

    assert [c["payment_id"] for c in credited] == [g.payment_id for g in goods]
    assert [json.loads(r.value or b"")["payment_id"] for r in dead] == [
        zero.payment_id,
        negative_bonus.payment_id,
    ]
    headers = [dict((k, v.decode()) for k, v in r.headers) for r in dead]
    assert {h["dlq.reason"] for h in headers} == {"processing_failed"}
    assert all("InvalidPurchaseError" in h["dlq.error"] for h in headers)
