"""A redelivered request racing the reconciliation of its own purchase in doubt.

Reconciliation claims a purchase in doubt (a row lock held while it asks the provider);
a redelivery of the same request, arriving meanwhile, would charge it again. Whatever the
order, the purchase gets one outcome, the one the provider's books justify, and the card
is never charged by the redelivery behind reconciliation's back.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from services.payment.errors import ProviderUnavailableError
from services.payment.main import create_app
from services.payment.provider import Charge, SimulatedProvider
from services.payment.settings import PaymentSettings
from shared import topics
from shared.money import Money
from tests.integration.test_payment import card_charges
from tests.support import TopicReader, eventually, in_process, publish, purchase_request, unique

pytestmark = pytest.mark.integration

OUTCOMES = (topics.PURCHASE_COMPLETED, topics.PURCHASE_FAILED)


class HeldLookups:
    """The simulated provider, except that a lookup of `key` waits for the test to let it
    answer (reconciliation then holds its claim: the purchase's row lock), and its first
    charge fails before reaching the network when `unreachable_once`."""

    def __init__(self, provider: SimulatedProvider, key: str, *, unreachable_once: bool) -> None:
        self._provider = provider
        self._key = key
        self._unreachable_once = unreachable_once
        self.looking = asyncio.Event()
        self.answer = asyncio.Event()
        self.charges: list[str] = []

    async def charge(self, *, idempotency_key: str, method: str, amount: Money) -> Charge:
        self.charges.append(idempotency_key)
        if idempotency_key == self._key and self._unreachable_once:
            self._unreachable_once = False
            raise ProviderUnavailableError("held lookups: unreachable once")
        return await self._provider.charge(
            idempotency_key=idempotency_key, method=method, amount=amount
        )

    async def lookup(self, *, idempotency_key: str) -> Charge | None:
        if idempotency_key == self._key:
            self.looking.set()
            await self.answer.wait()
        return await self._provider.lookup(idempotency_key=idempotency_key)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        database_url, min_size=1, max_size=2, server_settings={"search_path": "payment"}
    )
    yield pool
    await pool.close()


async def waiting_for_a_row_lock(database_url: str) -> bool:
    """Whether a session waits for a row lock on the purchases (the redelivery's claim)."""
    conn = await asyncpg.connect(database_url)
    try:
        return bool(
            await conn.fetchval(
                """
                SELECT count(*) FROM pg_stat_activity
                WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE purchases%'
                """
            )
        )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("method", "unreachable_once", "outcome", "charged"),
    [
        # Charged, its answer lost: reconciliation finds the charge and completes it.
        ("pm_card_timeout", False, topics.PURCHASE_COMPLETED, [("approved", 1)]),
        # The charge never reached the provider: reconciliation fails it; the
        # redelivery, which would charge a working card, finds it failed and does not.
        ("pm_card_ok", True, topics.PURCHASE_FAILED, []),
    ],
)
async def test_a_redelivery_waits_for_reconciliation_and_never_charges_behind_it(
    service_settings: Callable[..., Any],
    infra: Any,
    database_url: str,
    pool: asyncpg.Pool,
    method: str,
    unreachable_once: bool,
    outcome: str,
    charged: list[tuple[str, int]],
) -> None:
    user = unique("user")
    request = purchase_request(user_id=user, method=method)
    request_id = request["request_id"]
    provider = HeldLookups(
        SimulatedProvider(lambda: pool), request_id, unreachable_once=unreachable_once
    )
    settings = service_settings(
        PaymentSettings,
        provider_max_attempts=1,  # one attempt: in doubt at once
        reconcile_after_s=0.5,
        reconcile_interval_s=0.1,
    )
    async with TopicReader(infra, OUTCOMES) as reader, in_process(create_app(settings, provider)):
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, request)])
        async with asyncio.timeout(60):
            await provider.looking.wait()  # claimed, asking
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, request)])  # redelivered
        await eventually(lambda: waiting_for_a_row_lock(database_url))
        provider.answer.set()
        [settled] = await reader.wait_for(outcome, request_id=request_id)
        sentinel = purchase_request(user_id=user)  # after the redelivery in the partition
        await publish(infra, topics.PURCHASE_REQUESTED, [(user, sentinel)])
        await reader.wait_for(topics.PURCHASE_COMPLETED, request_id=sentinel["request_id"])
        answered = [t for t in OUTCOMES for _ in reader.matching(t, request_id=request_id)]

    assert answered == [outcome]  # one outcome, never both
    assert provider.charges.count(request_id) == 1  # the redelivery did not charge again
    assert await card_charges(database_url, request_id) == charged
    if outcome == topics.PURCHASE_FAILED:
        assert settled["reason"] == "provider_unavailable"
