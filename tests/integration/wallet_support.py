"""Helpers for the wallet's integration tests: events as payment publishes them, reads."""

from decimal import Decimal
from typing import Any

import asyncpg
import httpx

from services.wallet import domain
from services.wallet.ledger import Bookkeeper
from shared.contracts import GiftDebitRequested, Message, PurchaseCompleted, PurchaseReversed
from shared.db import Database
from shared.money import Money
from tests.support import unique

SHARDS = 6
"""The platform's shards in these tests: the test stack's topics have six partitions
(devstack's `num.partitions`, the default TOPIC_PARTITIONS)."""


def completed(user_id: str, coins: int = 70, bonus: int = 0) -> PurchaseCompleted:
    return PurchaseCompleted(
        request_id=unique("req"),
        payment_id=unique("pay"),
        user_id=user_id,
        package_id="coins_70",
        coins=coins,
        bonus_coins=bonus,
        price=Money(amount_minor=99, currency="USD"),
    )


def reversal(purchase: PurchaseCompleted, coins: int | None = None) -> PurchaseReversed:
    """The payment service's answer to a chargeback of `purchase`."""
    return PurchaseReversed(
        request_id=unique("cb"),
        payment_id=purchase.payment_id,
        user_id=purchase.user_id,
        coins=purchase.coins + purchase.bonus_coins if coins is None else coins,
    )


def as_message(event: Message) -> tuple[str, bytes]:
    return event.key(), event.model_dump_json().encode()


async def balance_of(wallet: httpx.AsyncClient, user_id: str) -> dict[str, Any]:
    response = await wallet.get(f"/v1/users/{user_id}/balance")
    assert response.status_code == 200
    return dict(response.json())


async def coins_of(wallet: httpx.AsyncClient, user_id: str) -> int:
    return int((await balance_of(wallet, user_id))["coins"])


async def spend(database_url: str, user_id: str, coins: int) -> None:
    """Spend coins on a gift, posted straight to the ledger as the gift saga's debit
    posts it (half the coins' value to a creator, half to the platform)."""
    db = Database(database_url, schema="wallet")
    await db.open()
    try:
        draft = domain.gift_debit(
            GiftDebitRequested(
                request_id=unique("gift"),
                sender_id=user_id,
                creator_id=unique("creator"),
                coins=coins,
                diamonds=Decimal(coins) / 2,
            )
        )
        async with db.transaction() as conn:
            await Bookkeeper(shards=SHARDS).post(conn, [draft])
    finally:
        await db.close()


async def pending_clawbacks(database_url: str, user_id: str) -> list[str]:
    """Payment ids of the user's reversals still waiting for their credit."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT payment_id FROM wallet.pending_clawbacks WHERE user_id = $1", user_id
        )
        return [row["payment_id"] for row in rows]
    finally:
        await conn.close()


async def give_diamonds(database_url: str, creator_id: str, diamonds: int) -> None:
    """Give a creator diamonds as gifts do, posted straight to the ledger: a fan buys
    coins and gifts twice as many coins as diamonds (the default 50% share)."""
    db = Database(database_url, schema="wallet")
    await db.open()
    try:
        fan = unique("fan")
        credit = domain.purchase_credit(completed(fan, coins=diamonds * 2))
        gift = domain.gift_debit(
            GiftDebitRequested(
                request_id=unique("gift"),
                sender_id=fan,
                creator_id=creator_id,
                coins=diamonds * 2,
                diamonds=Decimal(diamonds),
            )
        )
        async with db.transaction() as conn:
            await Bookkeeper(shards=SHARDS).post(conn, [credit, gift])
    finally:
        await db.close()
