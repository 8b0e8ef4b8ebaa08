"""The ledger audit (`python -m services.wallet.audit`) on a busy ledger and on ledgers
corrupted on purpose, run as an operator runs it: a process reading DATABASE_URL."""

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from services.wallet.main import create_app
from services.wallet.service import WalletService
from services.wallet.settings import WalletSettings
from shared import migrations, topics
from shared.db import Database
from tests.integration.wallet_support import SHARDS, as_message, completed, reversal, spend
from tests.support import (
    TopicReader,
    create_database,
    drop_database,
    in_process,
    publish,
    run_audit,
    unique,
)

pytestmark = pytest.mark.integration


def verdict(output: str, check: str) -> str:
    """The result column of one check in the report."""
    [line] = [line for line in output.splitlines() if f" {check} " in line]
    return line.split("│")[2].strip()


async def test_the_audit_passes_on_a_busy_ledger_of_credits_spending_and_clawbacks(
    service_settings: Callable[..., Any], infra: Any, database_url: str
) -> None:
    users = [unique("busy") for _ in range(40)]
    purchases = [
        completed(users[n % 40], coins=70 * (1 + n % 5), bonus=7 * (n % 3)) for n in range(200)
    ]
    early = [reversal(p) for p in purchases[0:200:8]]  # published before their credits
    late = [reversal(p) for p in purchases[4:200:8]]  # after, some once the coins are spent
    async with (
        TopicReader(infra, (topics.COINS_CREDITED, topics.COINS_CLAWED_BACK)) as reader,
        in_process(create_app(service_settings(WalletSettings))),
    ):
        await publish(infra, topics.PURCHASE_REVERSED, list(map(as_message, early)))
        await publish(infra, topics.PURCHASE_COMPLETED, list(map(as_message, purchases)))
        await reader.wait_for_all(
            topics.COINS_CREDITED, "payment_id", [p.payment_id for p in purchases]
        )
        for user in users[4::8]:  # their purchases are all reversed late: they go negative
            await spend(database_url, user, 60)
        await publish(infra, topics.PURCHASE_REVERSED, list(map(as_message, late)))
        clawed = await reader.wait_for_all(
            topics.COINS_CLAWED_BACK, "payment_id", [undo.payment_id for undo in early + late]
        )
        frozen = [c for c in clawed.values() if c["balance_after"] < 0]

    assert frozen, "some clawbacks should have left an account negative"
    returncode, output = await run_audit(database_url)
    assert returncode == 0, output
    assert "AUDIT PASSED" in output
    assert verdict(output, "below zero only by clawback") == "ok"
    # Totals print as plain integers (sums of bigint come back as numeric otherwise).
    assert re.search(r"coins: purchased \d+, bonus \d+, held by users \d+, spent \d+", output)


@pytest.fixture
async def small_ledger(infra: Any) -> AsyncIterator[str]:
    """A database of its own holding a small, whole ledger the test may corrupt."""
    name = f"coinstream_audit_{uuid.uuid4().hex[:8]}"
    url = await create_database(infra.database_url, name)
    await asyncio.to_thread(migrations.apply, url, "wallet")
    db = Database(url, schema="wallet")
    await db.open()
    try:
        service = WalletService(db, shards=SHARDS)
        bought = [completed("ada", coins=350, bonus=35), completed("bob", coins=70)]
        await service.purchases.credit(bought)
        await service.purchases.claw_back([reversal(bought[0])])
    finally:
        await db.close()
    yield url
    await drop_database(infra.database_url, name)


async def corrupt(url: str, sql: str) -> None:
    """Run SQL with triggers off (as a replica would), bypassing the entry rules."""
    conn = await asyncpg.connect(url, server_settings={"search_path": "wallet"})
    try:
        await conn.execute(f"SET session_replication_role = replica; {sql}")
    finally:
        await conn.close()


BOB = "(SELECT account_id FROM accounts WHERE owner_id = 'bob' AND kind = 'user_coins')"
REVENUE = "(SELECT account_id FROM accounts WHERE owner_id = 'platform' AND kind = 'coin_revenue')"
LAST_TX = "(SELECT max(tx_id) FROM ledger_transactions)"


@pytest.mark.parametrize(
    ("sql", "failing"),
    [
        pytest.param(
            f"UPDATE accounts SET balance = balance + 5 WHERE account_id = {BOB}",
            ["balances match entries"],
            id="a-balance-moved-without-entries",
        ),
        pytest.param(
            f"""INSERT INTO ledger_entries (tx_id, account_id, amount, balance_after)
                VALUES ({LAST_TX}, {BOB}, 5, 75);
                UPDATE accounts SET balance = 75 WHERE account_id = {BOB}""",
            ["transactions sum to zero", "coins issued = held + spent"],
            id="coins-minted-by-an-unbalanced-entry",
        ),
        pytest.param(
            f"""INSERT INTO ledger_transactions (kind, idempotency_key, request_id)
                VALUES ('gift', 'forged', 'r');
                INSERT INTO ledger_entries (tx_id, account_id, amount, balance_after,
                                            counter_account_id)
                VALUES ({LAST_TX}, {BOB}, -100, -30, {REVENUE}),
                       ({LAST_TX}, {REVENUE}, 100, 100, {BOB});
                UPDATE accounts SET balance = -30, frozen = true WHERE account_id = {BOB};
                UPDATE accounts SET balance = 100 WHERE account_id = {REVENUE}""",
            ["below zero only by clawback"],
            id="a-gift-spent-more-than-the-balance",
        ),
        pytest.param(
            f"UPDATE accounts SET frozen = true WHERE account_id = {BOB}",
            ["negative only when frozen"],
            id="a-positive-account-frozen",
        ),
    ],
)
async def test_the_audit_fails_and_names_what_a_corrupted_ledger_breaks(
    small_ledger: str, sql: str, failing: list[str]
) -> None:
    returncode, output = await run_audit(small_ledger)
    assert returncode == 0, output  # whole before the corruption
    await corrupt(small_ledger, sql)

    returncode, output = await run_audit(small_ledger)
    assert returncode == 1, output
    assert "AUDIT FAILED" in output
    for check in failing:
        assert "violation" in verdict(output, check), output
    for check in {"balances match entries", "below zero only by clawback"} - set(failing):
        assert verdict(output, check) == "ok", output


async def test_the_audit_exits_2_when_it_cannot_read_the_database(infra: Any) -> None:
    missing = infra.database_url.rsplit("/", 1)[0] + f"/absent_{uuid.uuid4().hex[:8]}"
    returncode, output = await run_audit(missing)
    assert returncode == 2
    assert "cannot audit" in output
