"""No hot rows (issue 11): wallet transactions of users in different platform shards never
wait for each other's locks, and the shard a message books into is the partition Kafka
put it in, so replicas (which own disjoint partitions) lock disjoint rows.

Each case holds one wallet transaction open, uncommitted, with every lock it took,
while a second one runs with `lock_timeout = 1s`: had it waited for any lock, row or
transaction, PostgreSQL would fail it with LockNotAvailableError. Both run the service's
own code on two connections of real PostgreSQL.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from devstack import Endpoints
from services.wallet import domain
from services.wallet.domain import AccountKind
from services.wallet.main import create_app
from services.wallet.service import WalletService
from services.wallet.settings import WalletSettings
from shared import topics
from shared.contracts import (
    DiamondsHoldRequested,
    GiftDebitRequested,
    PayoutCompleted,
    utc_now,
)
from shared.db import Connection, Database
from shared.money import Money
from tests.integration.wallet_support import (
    SHARDS,
    as_message,
    completed,
    give_diamonds,
    reversal,
)
from tests.support import TopicReader, in_process, publish, run_audit, unique

pytestmark = pytest.mark.integration

LOCK_TIMEOUT = "1s"


class Held(Database):
    """The wallet's database, whose transactions stay open (uncommitted, their locks
    held) at the end of their work until `release` is set."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, schema="wallet")
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with super().transaction() as conn:
            yield conn
            self.holding.set()
            await self.release.wait()


class Impatient(Database):
    """The wallet's database, whose transactions fail rather than wait for a lock."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, schema="wallet")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with super().transaction() as conn:
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            yield conn


def user_in(shard: int, prefix: str = "user") -> str:
    """A new user id whose messages Kafka partitions (and the wallet shards) to `shard`."""
    while True:
        user = unique(prefix)
        if domain.shard_of(user, SHARDS) == shard:
            return user


Act = Callable[[WalletService], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Case:
    """A wallet transaction for one user: `prepare` commits what it needs beforehand,
    then returns the transaction itself."""

    name: str
    prepare: Callable[["Wallets", str], Awaitable[Act]]


@dataclass
class Wallets:
    url: str
    plain: WalletService

    def service(self, db: Database) -> WalletService:
        return WalletService(db, shards=SHARDS)


async def purchase(wallets: Wallets, user: str) -> Act:
    event = completed(user, coins=70, bonus=7)
    return lambda wallet: wallet.purchases.credit([event])


async def clawback(wallets: Wallets, user: str) -> Act:
    bought = completed(user, coins=70, bonus=7)
    await wallets.plain.purchases.credit([bought])
    return lambda wallet: wallet.purchases.claw_back([reversal(bought)])


async def gift(wallets: Wallets, user: str) -> Act:
    await wallets.plain.purchases.credit([completed(user, coins=100)])
    request = GiftDebitRequested(
        request_id=unique("gift"),
        sender_id=user,
        creator_id=unique("creator"),
        coins=10,
        diamonds=Decimal(5),
    )
    return lambda wallet: wallet.gifts.debit([request])


def hold_request(creator: str) -> DiamondsHoldRequested:
    return DiamondsHoldRequested(
        request_id=unique("payout-req"),
        payout_id=unique("payout"),
        creator_id=creator,
        diamonds=10,
        deadline=utc_now() + timedelta(hours=1),
    )


async def payout_hold(wallets: Wallets, creator: str) -> Act:
    await give_diamonds(wallets.url, creator, 10)
    request = hold_request(creator)
    return lambda wallet: wallet.holds.place([request])


async def payout_post(wallets: Wallets, creator: str) -> Act:
    await give_diamonds(wallets.url, creator, 10)
    held = hold_request(creator)
    await wallets.plain.holds.place([held])
    paid = PayoutCompleted(
        request_id=held.request_id,
        payout_id=held.payout_id,
        creator_id=creator,
        diamonds=10,
        amount=Money(amount_minor=5, currency="USD"),
    )
    return lambda wallet: wallet.holds.close([paid])


CASES = [
    Case("purchase", purchase),
    Case("clawback", clawback),
    Case("gift", gift),
    Case("payout hold", payout_hold),
    Case("payout post", payout_post),
]
# The cases that book a platform account (a hold moves a creator's own diamonds only).
PLATFORM_CASES = [case for case in CASES if case.name != "payout hold"]


@pytest.fixture
async def wallets(database: Endpoints) -> AsyncIterator[Wallets]:
    url = database.database(WalletSettings.service_name)
    db = Database(url, schema="wallet")
    await db.open()
    try:
        yield Wallets(url, WalletService(db, shards=SHARDS))
    finally:
        await db.close()


async def beside(wallets: Wallets, held: Act, other: Act) -> float:
    """Run `held` and keep its transaction open; meanwhile run `other`, which fails with
    LockNotAvailableError if it waits for any lock longer than LOCK_TIMEOUT. Returns how
    long `other` took."""
    holder, impatient = Held(wallets.url), Impatient(wallets.url)
    await holder.open()
    await impatient.open()
    first = asyncio.create_task(held(wallets.service(holder)))
    try:
        async with asyncio.timeout(10):
            await holder.holding.wait()
        started = time.monotonic()
        await other(wallets.service(impatient))
        return time.monotonic() - started
    finally:
        holder.release.set()
        await first  # commits: the held transaction was never disturbed
        await holder.close()
        await impatient.close()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_transactions_in_different_shards_never_wait_for_each_other(
    wallets: Wallets, case: Case
) -> None:
    held = await case.prepare(wallets, user_in(1))
    other = await case.prepare(wallets, user_in(2))

    took = await beside(wallets, held, other)  # no LockNotAvailableError: it never waited

    assert took < 1.0


@pytest.mark.parametrize("case", PLATFORM_CASES, ids=lambda case: case.name)
async def test_transactions_in_one_shard_do_wait(wallets: Wallets, case: Case) -> None:
    """The contrary, so the test above proves something: two users of one shard share its
    platform rows, and the second transaction waits until the lock timeout."""
    held = await case.prepare(wallets, user_in(3))
    other = await case.prepare(wallets, user_in(3))

    with pytest.raises(asyncpg.LockNotAvailableError):
        await beside(wallets, held, other)


async def test_payout_holds_lock_no_platform_row_and_wait_only_for_their_creator(
    wallets: Wallets,
) -> None:
    creator = user_in(4, "creator")
    held = await payout_hold(wallets, creator)
    neighbour = await payout_hold(wallets, user_in(4, "creator"))
    await beside(wallets, held, neighbour)  # the same shard: nothing shared

    again = await payout_hold(wallets, creator)
    later = await payout_hold(wallets, creator)
    with pytest.raises(asyncpg.LockNotAvailableError):
        await beside(wallets, again, later)  # the same creator: their accounts


@pytest.fixture
async def wallet(
    service_settings: Callable[..., Any], operator_token: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = service_settings(WalletSettings)
    assert settings.topic_partitions == SHARDS
    async with in_process(create_app(settings), token=operator_token) as client:
        yield client


async def issuance_owner(database_url: str, payment_id: str) -> str:
    """The owner of the coin issuance account a purchase was credited from."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "wallet"})
    try:
        owner: str = await conn.fetchval(
            """
            SELECT c.owner_id
            FROM ledger_transactions t
            JOIN ledger_entries e ON e.tx_id = t.tx_id
            JOIN accounts c ON c.account_id = e.counter_account_id
            WHERE t.idempotency_key = $1 AND c.kind = 'coin_issuance'
            """,
            domain.purchase_key(payment_id),
        )
        return owner
    finally:
        await conn.close()


async def test_a_purchase_books_into_the_shard_of_the_partition_kafka_put_it_in(
    wallet: httpx.AsyncClient, infra: Any, database_url: str
) -> None:
    purchases = [completed(unique("user")) for _ in range(24)]
    async with TopicReader(infra, (topics.PURCHASE_COMPLETED,)) as reader:
        await publish(infra, topics.PURCHASE_COMPLETED, [as_message(p) for p in purchases])
        await reader.wait_for_all(
            topics.PURCHASE_COMPLETED, "payment_id", [p.payment_id for p in purchases]
        )
        partition = {record.key: record.partition for record in reader.records}
    async with TopicReader(infra, (topics.COINS_CREDITED,)) as credited:
        await credited.wait_for_all(
            topics.COINS_CREDITED, "payment_id", [p.payment_id for p in purchases]
        )

    partitions = [partition[p.user_id.encode()] for p in purchases]
    assert len(set(partitions)) > 1, "the purchases should spread over partitions"
    for bought, number in zip(purchases, partitions, strict=True):
        assert domain.shard_of(bought.user_id, SHARDS) == number
        expected = domain.platform(AccountKind.COIN_ISSUANCE, number).owner_id
        assert await issuance_owner(database_url, bought.payment_id) == expected
    returncode, output = await run_audit(database_url)
    assert returncode == 0, output
