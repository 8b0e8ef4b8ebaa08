"""The rules the wallet's database enforces by itself, whatever a writer computed.

Each test writes raw SQL inside a transaction it rolls back, so the session's ledger
stays exactly as the wallet left it (other tests audit it).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from services.wallet.domain import AccountKind
from tests.support import unique

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url, server_settings={"search_path": "wallet"})
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()


async def account(conn: asyncpg.Connection, owner: str, kind: str) -> int:
    return int(
        await conn.fetchval(
            """
            INSERT INTO accounts (owner_id, kind) VALUES ($1, $2)
            ON CONFLICT (owner_id, kind) DO UPDATE SET kind = excluded.kind
            RETURNING account_id
            """,
            owner,
            kind,
        )
    )


async def last_balance(conn: asyncpg.Connection, account_id: int) -> int:
    value = await conn.fetchval(
        "SELECT balance_after FROM ledger_entries WHERE account_id = $1"
        " ORDER BY entry_id DESC LIMIT 1",
        account_id,
    )
    return int(value or 0)


async def post(conn: asyncpg.Connection, kind: str, *legs: tuple[int, int]) -> None:
    """One transaction of (account_id, amount) entries, balance_after computed right."""
    tx_id = await conn.fetchval(
        "INSERT INTO ledger_transactions (kind, idempotency_key, request_id)"
        " VALUES ($1, $2, 'r') RETURNING tx_id",
        kind,
        unique("key"),
    )
    running: dict[int, int] = {}
    rows = []
    for account_id, amount in legs:
        before = running.get(account_id)
        if before is None:
            before = await last_balance(conn, account_id)
        running[account_id] = before + amount
        rows.append((tx_id, account_id, amount, running[account_id]))
    await conn.execute(
        """
        INSERT INTO ledger_entries (tx_id, account_id, amount, balance_after)
        SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
        """,
        *(list(column) for column in zip(*rows, strict=True)),
    )


@asynccontextmanager
async def refused(
    conn: asyncpg.Connection, error: type[Exception], match: str | None = None
) -> AsyncIterator[None]:
    """Expect `error`; a savepoint keeps the test's transaction usable afterwards."""
    with pytest.raises(error, match=match):
        async with conn.transaction():
            yield


async def platform(conn: asyncpg.Connection, kind: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT account_id FROM accounts WHERE owner_id = 'platform' AND kind = $1", kind
        )
    )


async def test_the_account_kinds_table_is_the_domains(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("SELECT kind, unit, user_owned, negative_allowed FROM account_kinds")
    assert {tuple(row) for row in rows} == {
        (str(kind), str(kind.unit), kind.user_owned, kind.negative_allowed) for kind in AccountKind
    }


async def test_platform_accounts_hold_the_lowest_ids(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("SELECT owner_id, kind FROM accounts ORDER BY account_id LIMIT 5")
    assert [tuple(row) for row in rows] == [
        ("platform", "coin_issuance"),
        ("platform", "bonus_issuance"),
        ("platform", "coin_revenue"),
        ("platform", "diamond_issuance"),
        ("platform", "payout_clearing"),
    ]


async def test_platform_kinds_belong_to_the_platforms_shards_only(
    conn: asyncpg.Connection,
) -> None:
    await account(conn, "platform/7", "coin_revenue")  # a shard, as created on first use
    for owner in (unique("user"), "platform/", "platform/07", "platform/-1"):
        async with refused(conn, asyncpg.CheckViolationError, "platform_kinds_in_platform_shards"):
            await account(conn, owner, "coin_revenue")


async def test_only_a_clawback_may_take_user_coins_below_zero(conn: asyncpg.Connection) -> None:
    user = await account(conn, unique("user"), "user_coins")
    issuance, revenue = await platform(conn, "coin_issuance"), await platform(conn, "coin_revenue")
    await post(conn, "purchase", (user, 70), (issuance, -70))
    await post(conn, "gift", (user, -50), (revenue, 50))
    async with refused(conn, asyncpg.CheckViolationError, "below zero"):
        await post(conn, "gift", (user, -21), (revenue, 21))
    await post(conn, "clawback", (user, -70), (issuance, 70))
    assert await last_balance(conn, user) == -50
    # A credit into a negative balance lowers nothing, so it is fine though still negative.
    await post(conn, "purchase", (user, 20), (issuance, -20))
    assert await last_balance(conn, user) == -30


async def test_no_clawback_takes_diamonds_or_revenue_below_zero(conn: asyncpg.Connection) -> None:
    diamonds = await account(conn, unique("creator"), "user_diamonds")
    issuance = await platform(conn, "diamond_issuance")
    async with refused(conn, asyncpg.CheckViolationError, "below zero"):
        await post(conn, "clawback", (diamonds, -1), (issuance, 1))


async def test_each_unit_of_a_transaction_balances(conn: asyncpg.Connection) -> None:
    user = await account(conn, unique("user"), "user_coins")
    async with refused(conn, asyncpg.CheckViolationError, "does not balance"):
        # Sums to zero overall, but mints 5 coins out of 5 diamonds.
        await post(conn, "purchase", (user, 5), (await platform(conn, "diamond_issuance"), -5))


async def test_an_entry_must_continue_its_accounts_balance(conn: asyncpg.Connection) -> None:
    user = await account(conn, unique("user"), "user_coins")
    issuance = await platform(conn, "coin_issuance")
    tx_id = await conn.fetchval(
        "INSERT INTO ledger_transactions (kind, idempotency_key, request_id)"
        " VALUES ('purchase', $1, 'r') RETURNING tx_id",
        unique("key"),
    )
    issued = await last_balance(conn, issuance)
    async with refused(conn, asyncpg.CheckViolationError, "does not continue"):
        # A writer that read a stale balance: the user had 0, it claims 100 + 70.
        await conn.execute(
            "INSERT INTO ledger_entries (tx_id, account_id, amount, balance_after)"
            " VALUES ($1, $2, 70, 170), ($1, $3, -70, $4)",
            tx_id,
            user,
            issuance,
            issued - 70,
        )


async def test_a_negative_balance_must_be_frozen(conn: asyncpg.Connection) -> None:
    user = await account(conn, unique("user"), "user_coins")
    async with refused(
        conn,
        asyncpg.CheckViolationError,
        "balance_negative_only_when_frozen|only_user_coins_freeze",
    ):
        await conn.execute("UPDATE accounts SET balance = -1 WHERE account_id = $1", user)
    await conn.execute(
        "UPDATE accounts SET balance = -1, frozen = true WHERE account_id = $1", user
    )
    async with refused(
        conn,
        asyncpg.CheckViolationError,
        "balance_negative_only_when_frozen|only_user_coins_freeze",
    ):
        await conn.execute(
            "UPDATE accounts SET frozen = true"
            " WHERE owner_id = 'platform' AND kind = 'coin_revenue'"
        )


async def test_ledger_rows_are_immutable(conn: asyncpg.Connection) -> None:
    async with refused(conn, asyncpg.RaiseError, "immutable"):
        await conn.execute("UPDATE ledger_entries SET amount = amount WHERE false")
    async with refused(conn, asyncpg.RaiseError, "immutable"):
        await conn.execute("DELETE FROM ledger_transactions WHERE false")


async def test_an_entry_must_name_an_account_and_a_transaction_that_exist(
    conn: asyncpg.Connection,
) -> None:
    """Checked once per statement (migration 0011), as foreign keys did row by row."""
    user = await account(conn, unique("user"), "user_coins")
    issuance = await platform(conn, "coin_issuance")
    issued = await last_balance(conn, issuance)
    tx_id = await conn.fetchval(
        "INSERT INTO ledger_transactions (kind, idempotency_key, request_id)"
        " VALUES ('purchase', $1, 'r') RETURNING tx_id",
        unique("key"),
    )
    nowhere = int(await conn.fetchval("SELECT max(account_id) + 1000 FROM accounts"))
    entries = (
        "INSERT INTO ledger_entries (tx_id, account_id, amount, balance_after, counter_account_id)"
        " VALUES ($1, $2, 70, 70, $4), ($1, $3, -70, $5, $2)"
    )
    async with refused(conn, asyncpg.ForeignKeyViolationError, "1 account"):
        await conn.execute(entries, tx_id, nowhere, issuance, issuance, issued - 70)
    async with refused(conn, asyncpg.ForeignKeyViolationError, "1 account"):
        await conn.execute(entries, tx_id, user, issuance, nowhere, issued - 70)
    async with refused(conn, asyncpg.ForeignKeyViolationError, "1 transaction"):
        await conn.execute(entries, tx_id + 1000, user, issuance, issuance, issued - 70)
    await conn.execute(entries, tx_id, user, issuance, issuance, issued - 70)  # all exist


async def test_accounts_are_never_deleted(conn: asyncpg.Connection) -> None:
    await account(conn, unique("user"), "user_coins")
    async with refused(conn, asyncpg.RaiseError, "never deleted"):
        await conn.execute("DELETE FROM accounts WHERE false")
    async with refused(conn, asyncpg.RaiseError, "never deleted"):
        await conn.execute("TRUNCATE accounts CASCADE")
