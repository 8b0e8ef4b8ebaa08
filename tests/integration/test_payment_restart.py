"""Payment stopped between charge and settle, then started again: charged once, completed once."""

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from services.payment.main import create_app
from services.payment.provider import Charge, SimulatedProvider
from services.payment.settings import PaymentSettings
from shared import topics
from shared.money import Money
from tests.integration.test_payment import card_charges
from tests.support import TopicReader, eventually, in_process, publish, purchase_request, unique

pytestmark = pytest.mark.integration


class ChargesThenNeverAnswers:
    """The card network as the first process sees it: the charge goes through (the
    simulated provider's table records it), then the process stops before any answer
    arrives — between charge and settle."""

    def __init__(self, provider: SimulatedProvider) -> None:
        self._provider = provider
        self.charged = asyncio.Event()

    async def charge(self, *, idempotency_key: str, method: str, amount: Money) -> Charge:
        await self._provider.charge(idempotency_key=idempotency_key, method=method, amount=amount)
        self.charged.set()
        await asyncio.sleep(3600)  # cancelled when the process stops
        raise AssertionError("the process was to stop first")

    async def lookup(self, *, idempotency_key: str) -> Charge | None:
        return await self._provider.lookup(idempotency_key=idempotency_key)


async def test_a_payment_restarted_between_charge_and_settle_charges_and_completes_once(
    service_settings: Callable[..., Any], infra: Any, database_url: str
) -> None:
    settings = service_settings(
        PaymentSettings, provider_retry_base_s=0.01, reconcile_after_s=1.0, reconcile_interval_s=0.2
    )
    user = unique("user")
    request = purchase_request(user_id=user, package_id="coins_700", amount=999)
    request_id = request["request_id"]
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"search_path": "payment"}
    )
    try:
        stopping = ChargesThenNeverAnswers(SimulatedProvider(lambda: pool))
        outcome_topics = (topics.PURCHASE_COMPLETED, topics.PURCHASE_FAILED)
        async with TopicReader(infra, outcome_topics) as reader:
            async with in_process(create_app(settings, provider=stopping)):
                await publish(infra, topics.PURCHASE_REQUESTED, [(user, request)])
                async with asyncio.timeout(60):
                    await stopping.charged.wait()
            assert await purchase_status(pool, request_id) == "pending"

            async with in_process(create_app(settings)):  # the real provider's books
                await reader.wait_for(topics.PURCHASE_COMPLETED, request_id=request_id)
                sentinel = purchase_request(user_id=user)  # its outcome comes after
                await publish(infra, topics.PURCHASE_REQUESTED, [(user, sentinel)])
                await reader.wait_for(topics.PURCHASE_COMPLETED, request_id=sentinel["request_id"])
            completions = reader.matching(topics.PURCHASE_COMPLETED, request_id=request_id)
            assert reader.matching(topics.PURCHASE_FAILED, user_id=user) == []

        # A republished outbox row is the same event; two different events would be a bug.
        assert len({c["event_id"] for c in completions}) == 1
        assert completions[0]["coins"] == 700
        charges = await card_charges(database_url, request_id)
        assert [outcome for outcome, _ in charges] == ["approved"]  # one charge, whoever asked
        assert await purchase_status(pool, request_id) == "completed"
    finally:
        await pool.close()


async def purchase_status(pool: asyncpg.Pool, request_id: str) -> str | None:
    async def settled_or_pending() -> str | None:
        status: str | None = await pool.fetchval(
            "SELECT status FROM purchases WHERE request_id = $1", request_id
        )
        return status

    return await eventually(settled_or_pending)
