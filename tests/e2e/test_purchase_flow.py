"""A purchase through the whole system: four processes, real Kafka and PostgreSQL."""

from typing import Any

import asyncpg
import httpx
import pytest

from devstack.procs import pid_alive
from shared import topics
from tests.e2e.conftest import Stack
from tests.support import TopicReader, eventually, publish, purchase_request, stack_auth, unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def balance(stack: Stack, user: str) -> dict[str, Any]:
    async with httpx.AsyncClient(headers=stack_auth(user, operator=False)) as http:
        response = await http.get(f"{stack.urls['wallet']}/v1/users/{user}/balance")
        response.raise_for_status()
        return dict(response.json())


async def coins_become(stack: Stack, user: str, coins: int) -> bool:
    return (await balance(stack, user))["coins"] == coins


async def test_every_service_is_ready_and_a_purchase_ends_as_coins(
    stack: Stack, infra: Any
) -> None:
    async with httpx.AsyncClient() as http:
        for service, url in stack.urls.items():
            ready = await http.get(f"{url}/health/ready")
            assert ready.status_code == 200, service
            assert (await http.get(f"{url}/metrics")).status_code == 401
            metrics = await http.get(f"{url}/metrics", headers=stack_auth())
            assert "coinstream_outbox_published" in metrics.text
    user = unique("user")
    request = purchase_request(user_id=user, package_id="coins_700", amount=999)
    await publish(infra, topics.PURCHASE_REQUESTED, [(user, request)])

    await eventually(lambda: coins_become(stack, user, 700))
    async with httpx.AsyncClient(headers=stack_auth(user, operator=False)) as http:
        purchase = await http.get(f"{stack.urls['payment']}/v1/purchases/{request['request_id']}")
    assert purchase.json()["status"] == "completed"


@pytest.mark.parametrize(
    ("service", "crash_at"),
    [
        ("wallet", "wallet.credit.received"),
        ("wallet", "wallet.credit.before_commit"),
        ("wallet", "wallet.credit.after_commit"),
        ("payment", "payment.recorded"),
        ("payment", "payment.charged"),
        ("payment", "payment.settled"),
    ],
)
async def test_a_service_killed_mid_purchase_completes_it_exactly_once_after_restart(
    stack: Stack, infra: Any, service: str, crash_at: str
) -> None:
    """SIGKILL between two steps of a purchase — the wallet on receipt, before its commit
    or after it; payment after recording, after charging, after settling (each before
    its offset moved) — and restart: one charge, one completion, one credit."""
    await stack.stop(service)
    doomed = await stack.start(service, COINSTREAM_CRASH_AT=crash_at)
    user = unique("user")
    first = purchase_request(user_id=user, package_id="coins_350", amount=499)
    watched = (topics.PURCHASE_COMPLETED, topics.COINS_CREDITED)
    async with TopicReader(infra, watched) as reader:
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, first)])

        async def died() -> bool:
            return not pid_alive(doomed.pid)

        await eventually(died)
        await stack.start(service)
        await eventually(lambda: coins_become(stack, user, 350))
        # Same key as the first purchase: once this is credited, any duplicate of the
        # first would have been applied too.
        second = purchase_request(user_id=user)
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, second)])
        await reader.wait_for(topics.COINS_CREDITED, user_id=user, amount=70)
        completions = reader.matching(topics.PURCHASE_COMPLETED, user_id=user)
        credits = reader.matching(topics.COINS_CREDITED, user_id=user)

    assert (await balance(stack, user))["coins"] == 420
    assert [credit["amount"] for credit in credits] == [350, 70]
    # A republished outbox row is the same event; two different events would be a bug.
    assert len({c["event_id"] for c in completions if c["request_id"] == first["request_id"]}) == 1
    # The simulated provider's books outlive the restart, as a real provider's: the card
    # was charged once per request, also when payment died after charging (payment.charged).
    charged = await card_charges(stack, [first["request_id"], second["request_id"]])
    assert charged == [(first["request_id"], "approved"), (second["request_id"], "approved")]


async def card_charges(stack: Stack, request_ids: list[str]) -> list[tuple[str, str]]:
    """(idempotency key, outcome) of each charge the simulated card provider recorded:
    one row per key it ever charged (its primary key), however often it was asked."""
    conn = await asyncpg.connect(stack.endpoints.database_url)
    try:
        rows = await conn.fetch(
            "SELECT idempotency_key, outcome FROM payment.simulated_card_charges"
            " WHERE idempotency_key = ANY($1::text[]) ORDER BY array_position($1, idempotency_key)",
            request_ids,
        )
    finally:
        await conn.close()
    return [(row["idempotency_key"], row["outcome"]) for row in rows]
