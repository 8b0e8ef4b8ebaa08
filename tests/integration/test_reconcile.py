"""`coinstream reconcile` after a busy run of the four services in this process (real
Kafka and PostgreSQL, a database of their own), run as an operator runs it: a process
reading the four schemas as the read-only role.

The tests run in file order: the first judges the busy run whole, later ones ask for
the `forged` fixture, which leaves a credit no purchase explains.

The topics are shared with every other test session on the same Kafka, and these
services consume whatever arrives meanwhile: another session's hand-published
purchase-completed becomes a credit here that no purchase explains, exactly as a forged
one would. So the tests are strict about every record of this module (each finding
names its user or creator) and name, but tolerate, findings about anyone else.
"""

import asyncio
import json
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from devstack import Endpoints
from services.gifting.main import create_app as create_gifting
from services.gifting.settings import GiftingSettings
from services.payment.main import create_app as create_payment
from services.payment.settings import PaymentSettings
from services.payout.main import create_app as create_payout
from services.payout.settings import PayoutSettings
from services.wallet.main import create_app as create_wallet
from services.wallet.settings import WalletSettings
from shared import auth, db_roles, topics
from shared.contracts import PurchaseCompleted
from shared.reconcile.checks import REGISTRY, Context, ProviderCheck, Result, SqlCheck
from shared.reconcile.providers import providers
from shared.settings import ServiceSettings
from tests.integration.gifting_support import gift_request
from tests.integration.wallet_support import as_message, completed
from tests.support import (
    TopicReader,
    drop_session_database,
    eventually,
    free_port,
    in_process,
    publish,
    purchase_request,
    session_database,
    session_groups,
    unique,
)

pytestmark = pytest.mark.integration

S = TypeVar("S", bound=ServiceSettings)

WATCHED = (
    topics.PURCHASE_COMPLETED,
    topics.PURCHASE_FAILED,
    topics.COINS_CREDITED,
    topics.COINS_CLAWED_BACK,
    topics.GIFT_SENT,
    topics.GIFT_REJECTED,
    topics.PAYOUT_COMPLETED,
    topics.PAYOUT_FAILED,
)


@dataclass
class Economy:
    infra: Any
    database: Endpoints
    reader: TopicReader
    ours: set[str] = field(default_factory=set)
    """The users and creators of this module's records."""

    @property
    def reader_url(self) -> str:
        return self.database.database(db_roles.READER)


@pytest.fixture(scope="module")
async def economy(infra: Any, jwt_keys: auth.KeyPair) -> AsyncIterator[Economy]:
    """The four services in this process on a database of their own (other tests'
    partial worlds would not reconcile), after a busy run of every kind of record."""
    database = await session_database(infra, "coinstream_rc")
    prefix = f"rc-{uuid.uuid4().hex[:8]}"
    await session_groups(infra, prefix)

    def settings(cls: type[S], **overrides: Any) -> S:
        values: dict[str, Any] = {
            "kafka": infra.kafka(cls.service_name),
            "database_url": database.database(cls.service_name),
            "consumer_group_prefix": prefix,
            "relay_poll_interval_s": 0.2,
            "auth": auth.AuthSettings(public_key_file=jwt_keys.public),
            **overrides,
        }
        return cls(**values)

    try:
        async with (
            TopicReader(infra, WATCHED) as reader,
            in_process(create_payment(settings(PaymentSettings))),
            in_process(create_wallet(settings(WalletSettings))),
            in_process(create_gifting(settings(GiftingSettings))),
            in_process(create_payout(settings(PayoutSettings, reconcile_interval_s=0.2))),
        ):
            world = Economy(infra, database, reader)
            await busy_run(world)
            yield world
    finally:
        await drop_session_database(infra, database)


async def busy_run(world: Economy) -> None:
    """Purchases (one through a flaky card, one declined), a chargeback, gifts (sent and
    rejected), payouts (paid, rejected by the bank, refused): every kind of record each
    check judges. Returns once every service has settled all of it."""
    infra, reader = world.infra, world.reader
    ann, ben, cid, dee = (unique(name) for name in ("ann", "ben", "cid", "dee"))
    paid, rejected = unique("creator-paid"), unique("creator-rejected")
    world.ours |= {ann, ben, cid, dee, paid, rejected}
    await register_creators(world, {paid: "po_bank_ok", rejected: "po_bank_rejected"})

    buys = [
        purchase_request(
            user_id=ann, package_id="coins_17500", amount=24999, method="pm_card_flaky"
        ),
        purchase_request(user_id=ben, package_id="coins_7000", amount=9999),
        purchase_request(user_id=cid, package_id="coins_350", amount=499),
        purchase_request(user_id=cid),  # 70 coins, charged back below
    ]
    declined = purchase_request(user_id=dee, method="pm_card_declined")
    await publish(infra, topics.PURCHASE_REQUESTED, [(b["user_id"], b) for b in [*buys, declined]])
    sold = await reader.wait_for_all(
        topics.PURCHASE_COMPLETED, "request_id", [b["request_id"] for b in buys]
    )
    await reader.wait_for(topics.PURCHASE_FAILED, request_id=declined["request_id"])
    payments = [sold[b["request_id"]]["payment_id"] for b in buys]
    await reader.wait_for_all(topics.COINS_CREDITED, "payment_id", payments)

    chargeback = {
        "chargeback_id": unique("cb"),
        "payment_id": payments[3],
        "user_id": cid,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    await publish(infra, topics.CHARGEBACK_RECEIVED, [(cid, chargeback)])
    await reader.wait_for(topics.COINS_CLAWED_BACK, payment_id=payments[3])

    sent = [
        gift_request(ann, paid, "interstellar"),  # 10,000 coins -> 5,000 diamonds
        gift_request(ben, rejected, "concert", 8),  # 4,000 -> 2,000
        gift_request(cid, paid, "rose", 3),  # 3 -> 1.5
    ]
    refused = [gift_request(dee, paid), gift_request(ben, ben)]  # no coins; self gift
    await publish(infra, topics.GIFT_REQUESTED, [(g["sender_id"], g) for g in sent + refused])
    await reader.wait_for_all(topics.GIFT_SENT, "request_id", [g["request_id"] for g in sent])
    await reader.wait_for_all(
        topics.GIFT_REJECTED, "request_id", [g["request_id"] for g in refused]
    )

    cash_outs = [payout(paid, 4000), payout(rejected, 2000), payout(paid, 100)]
    await publish(infra, topics.PAYOUT_REQUESTED, [(p["creator_id"], p) for p in cash_outs])
    await reader.wait_for(topics.PAYOUT_COMPLETED, request_id=cash_outs[0]["request_id"])
    for refusal in cash_outs[1:]:  # provider_rejected, below_minimum
        await reader.wait_for(topics.PAYOUT_FAILED, request_id=refusal["request_id"])
    # The wallet posts and voids holds on those events: wait until it has.
    await eventually(lambda: holds_closed(world, [paid, rejected], expected=2))


def payout(creator_id: str, diamonds: int) -> dict[str, Any]:
    return {
        "request_id": unique("payout"),
        "creator_id": creator_id,
        "diamonds": diamonds,
        "occurred_at": datetime.now(UTC).isoformat(),
    }


async def register_creators(world: Economy, methods: dict[str, str]) -> None:
    """Verified creators, as the identity system reports them; kept once payout has them."""
    now = datetime.now(UTC).isoformat()
    await publish(
        world.infra,
        topics.CREATOR_UPDATED,
        [
            (
                creator,
                {
                    "creator_id": creator,
                    "verified": True,
                    "payout_method": method,
                    "currency": "USD",
                    "occurred_at": now,
                },
            )
            for creator, method in methods.items()
        ],
    )

    async def kept() -> bool:
        found = await fetchval(
            world, "SELECT count(*) FROM payout.creators WHERE creator_id = ANY($1)", list(methods)
        )
        return found == len(methods)

    await eventually(kept)


async def holds_closed(world: Economy, creators: list[str], *, expected: int) -> bool:
    closed = await fetchval(
        world,
        "SELECT count(*) FROM wallet.holds WHERE creator_id = ANY($1) AND status <> 'open'",
        creators,
    )
    return closed == expected


async def fetchval(world: Economy, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(world.database.database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def forged(economy: Economy) -> PurchaseCompleted:
    return await forge_credit(economy)


async def forge_credit(economy: Economy) -> PurchaseCompleted:
    """A purchase-completed nobody sold, published by the operator (a super user that
    bypasses the ACLs): the wallet credits it, as it credits any well-formed event."""
    event = completed(unique("mallory"), coins=1_000_000)
    economy.ours.add(event.user_id)
    await publish(
        economy.infra, topics.PURCHASE_COMPLETED, [as_message(event)], principal="operator"
    )
    await economy.reader.wait_for(topics.COINS_CREDITED, payment_id=event.payment_id)
    return event


def forged_finding(event: PurchaseCompleted) -> str:
    return (
        f"credit of payment {event.payment_id} to {event.user_id} (1000000 + 0 bonus coins):"
        " payment has no such purchase"
    )


async def run_reconcile(database_url: str, *args: str) -> tuple[int, str, str]:
    """`coinstream reconcile ARGS` as an operator runs it, DATABASE_URL in the
    environment; its exit code, its output and its errors (wide enough for one check a
    line)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.cli",
        "reconcile",
        *args,
        env={**os.environ, "DATABASE_URL": database_url, "COLUMNS": "240"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output, errors = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode(), errors.decode()


def verdict(output: str, check: str) -> str:
    """The result column of one check in the report."""
    [line] = [line for line in output.splitlines() if f"│ {check} " in line]
    return line.split("│")[2].strip()


async def reconcile_json(economy: Economy, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """The JSON report with every finding, by check key."""
    returncode, output, errors = await run_reconcile(
        economy.reader_url, "--json", "--examples", "0", *args
    )
    assert returncode in (0, 1), output + errors
    return returncode, {check["check"]: check for check in json.loads(output)["checks"]}


def about(economy: Economy, findings: list[str]) -> list[str]:
    """The findings that concern this module's records."""
    return [f for f in findings if any(who in f for who in economy.ours)]


def foreign(economy: Economy, checks: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Findings about records of other test sessions (consumed from the shared topics)."""
    found = {key: c["findings"] for key, c in checks.items() if c["findings"]}
    return {key: [f for f in fs if f not in about(economy, fs)] for key, fs in found.items()}


async def test_a_clean_busy_run_reconciles_and_each_check_judged_records(
    economy: Economy,
) -> None:
    returncode, output, errors = await run_reconcile(economy.reader_url, "--grace", "0")
    returncode_json, checks = await reconcile_json(economy, "--grace", "0")

    for check in checks.values():
        assert not about(economy, check["findings"]), check
        # Not vacuous: the busy run left records of every kind each check judges.
        assert check["judged"] > 0, check
    noise = foreign(economy, checks)
    if noise:  # another session's records: named, and the only mismatches
        print(f"findings about other test sessions' records: {noise}")
        assert returncode_json == 1
        assert all(c["status"] != "mismatched" or c["check"] in noise for c in checks.values())
        return
    assert (returncode, returncode_json) == (0, 0), output + errors
    assert "RECONCILED" in output
    for registered in REGISTRY:
        assert verdict(output, registered.name) == "passed", output


async def test_a_forged_credit_is_in_flight_within_the_grace_then_a_mismatch(
    economy: Economy, forged: PurchaseCompleted
) -> None:
    # Younger than the grace: not judged yet, counted as in flight.
    returncode, checks = await reconcile_json(economy, "--grace", "3600")
    assert returncode == 0, checks
    credits = checks["credits_without_purchase"]
    assert (credits["mismatches"], credits["in_flight"] >= 1) == (0, True), credits

    returncode, output, errors = await run_reconcile(economy.reader_url, "--grace", "0")
    assert returncode == 1, output + errors
    assert "RECONCILIATION FAILED" in output
    assert "mismatch" in verdict(output, "wallet credits have a completed purchase")

    returncode, checks = await reconcile_json(economy, "--grace", "0")
    assert returncode == 1
    assert about(economy, checks["credits_without_purchase"]["findings"]) == [
        forged_finding(forged)
    ]
    for check in checks.values():  # nothing else of ours is wrong
        if check["check"] != "credits_without_purchase":
            assert not about(economy, check["findings"]), check


async def test_reconcile_exits_2_when_it_cannot_read_the_database(infra: Any) -> None:
    missing = infra.database_url.rsplit("/", 1)[0] + f"/absent_{uuid.uuid4().hex[:8]}"
    returncode, output, errors = await run_reconcile(missing)
    assert returncode == 2, output + errors
    assert "cannot reconcile" in output
    password = urlsplit(missing).password
    assert not password or password not in output

    returncode, output, _ = await run_reconcile(missing, "--json")
    assert returncode == 2
    assert "error" in json.loads(output)


async def test_reconcile_exits_2_as_a_role_that_may_not_read_every_schema(
    economy: Economy,
) -> None:
    if not economy.database.secrets or not economy.database.database_roles:
        pytest.skip("this stack has no per-service PostgreSQL roles")
    returncode, output, errors = await run_reconcile(economy.database.database("wallet"))
    assert returncode == 2, output + errors
    assert "permission denied" in output


async def test_watch_exports_the_mismatches_as_prometheus_gauges(
    economy: Economy, forged: PurchaseCompleted, jwt_keys: auth.KeyPair, operator_token: str
) -> None:
    port = free_port()
    with tempfile.NamedTemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "shared.cli", "reconcile", "--grace", "0", "--watch"),
            *("--interval", "1", "--metrics-port", str(port), "--json", "--examples", "0"),
            env={
                **os.environ,
                "DATABASE_URL": economy.reader_url,
                "JWT_PUBLIC_KEY_FILE": str(jwt_keys.public),
                "COLUMNS": "240",
            },
            stdout=log,
            stderr=log,
        )
        try:
            metrics = await eventually(lambda: scrape(port, operator_token), timeout_s=30)
            # As every service's /metrics: an operator's token reads the gauges, nobody else.
            user = auth.mint_token(jwt_keys.private, "it-viewer", ttl=timedelta(minutes=5))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/metrics")).status_code == 401
                bad = {"Authorization": "Bearer not-a-token"}
                assert (await http.get("/metrics", headers=bad)).status_code == 401
                theirs = {"Authorization": f"Bearer {user}"}
                assert (await http.get("/metrics", headers=theirs)).status_code == 403
                assert (await http.get("/health/live")).status_code == 200  # probes: no token
            # The runs after the first look only at what came since its cutoff, and
            # report the first run's finding with their own: a credit forged now is added.
            recent = await eventually(
                lambda: scrape(port, operator_token, 'kind="recent"'), timeout_s=30
            )
            carried = gauge(recent, "coinstream_reconcile_mismatches", "credits_without_purchase")
            assert carried >= 1
            later = await forge_credit(economy)
            await eventually(lambda: reported(log, later), timeout_s=30)
        finally:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                returncode = await process.wait()
        log.seek(0)
        output = log.read().decode()
    assert returncode == 0, output  # a stop asked for is a clean end
    assert gauge(metrics, "coinstream_reconcile_mismatches", "credits_without_purchase") >= 1
    for check in REGISTRY:  # every check that ran has its gauge
        assert gauge(metrics, "coinstream_reconcile_mismatches", check.key) >= 0
    assert "coinstream_reconcile_last_run_timestamp_seconds " in metrics
    assert "coinstream_reconcile_last_full_run_timestamp_seconds " in metrics
    runs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    first = {c["check"]: c for c in runs[0]["checks"]}["credits_without_purchase"]
    assert forged_finding(forged) in first["findings"]
    for run in runs[1:]:  # each later run: the first run's finding and what came since
        credits = {c["check"]: c for c in run["checks"]}["credits_without_purchase"]
        assert forged_finding(forged) in credits["findings"]
        assert credits["mismatches"] >= first["mismatches"]
        assert run["since"] is None  # the combined report speaks of every record
    assert forged_finding(later) in about(economy, credits["findings"])


async def reported(log: Any, event: PurchaseCompleted) -> bool:
    """Whether a run of the watch writing JSON lines to `log` found the forged `event`
    (read through a file of its own: `log`'s offset is the writer's too)."""
    written = await asyncio.to_thread(Path(log.name).read_bytes)
    return forged_finding(event).encode() in written


def gauge(metrics: str, name: str, check: str) -> float:
    [value] = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(f'{name}{{check="{check}"}} ')
    ]
    return value


async def scrape(port: int, token: str, showing: str = "") -> str | None:
    """The metrics once a run has succeeded (and they show `showing`); None while the
    endpoint is not up yet."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
        try:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
        except httpx.TransportError:
            return None
    text = response.text
    return text if "coinstream_reconcile_last_run_success 1.0" in text and showing in text else None


async def test_watch_does_not_serve_gauges_without_a_key_to_verify_tokens(
    economy: Economy,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWT_")}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shared.cli", "reconcile", "--watch"),
        *("--metrics-port", str(free_port())),
        env={**env, "DATABASE_URL": economy.reader_url, "COLUMNS": "240"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode == 2, output
    assert b"JWT_PUBLIC_KEY_FILE" in output


SET_CHARGE_OUTCOME = (
    "UPDATE payment.simulated_card_charges SET outcome = $2 WHERE idempotency_key = $1"
)
"""Sets what the simulated card provider's books say of a charge: $1 its idempotency
key, $2 the outcome."""


async def test_a_failed_purchase_the_provider_charged_is_a_mismatch(economy: Economy) -> None:
    """The provider's books say it took the money for a purchase payment failed (a lost
    answer failed by mistake): the user paid and got no coins. `--card none` skips it."""
    user = unique("paid-for-nothing")
    economy.ours.add(user)
    request = purchase_request(user_id=user, method="pm_card_declined")
    await publish(economy.infra, topics.PURCHASE_REQUESTED, [(user, request)])
    await economy.reader.wait_for(topics.PURCHASE_FAILED, request_id=request["request_id"])
    conn = await asyncpg.connect(economy.database.database_url)
    try:
        assert (
            await conn.execute(SET_CHARGE_OUTCOME, request["request_id"], "approved") == "UPDATE 1"
        )
        returncode, checks = await reconcile_json(economy, "--grace", "0")
        _, unasked = await reconcile_json(economy, "--grace", "0", "--card", "none")
    finally:
        await conn.execute(SET_CHARGE_OUTCOME, request["request_id"], "declined")
        await conn.close()

    assert returncode == 1
    assert about(economy, checks["failed_purchases_charged"]["findings"]) == [
        f"failed purchase (request {request['request_id']}, payment_declined) of {user}:"
        " the provider charged 99 USD (minor units)"
    ]
    for key in ("failed_purchases_charged", "purchases_without_charge"):
        assert unasked[key]["status"] == "not_checked", unasked[key]
        assert "--card none" in unasked[key]["reason"]


async def test_a_window_looks_only_at_the_records_of_its_last_seconds(
    economy: Economy, forged: PurchaseCompleted
) -> None:
    _, everything = await reconcile_json(economy, "--grace", "0")
    await asyncio.sleep(8)  # everything so far is older than the window below
    recent = await forge_credit(economy)
    # The command starts within the window's 5 s, even on a busy machine.
    returncode, windowed = await reconcile_json(economy, "--grace", "0", "--window", "5")

    assert returncode == 1
    credits = windowed["credits_without_purchase"]
    assert about(economy, credits["findings"]) == [forged_finding(recent)]  # not `forged`
    # The busy run's records are outside the window: nothing of ours is judged but the
    # new credit (other sessions' records consumed in the last seconds may be).
    assert credits["judged"] < everything["credits_without_purchase"]["judged"]
    assert (
        windowed["sent_gifts_without_debit"]["judged"]
        < (everything["sent_gifts_without_debit"]["judged"])
    )

    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "shared.cli", "reconcile", "--watch", "--window", "60"),
        env={**os.environ, "DATABASE_URL": economy.reader_url, "COLUMNS": "240"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await process.communicate()
    assert process.returncode == 2, output  # the watch windows its runs itself
    assert b"--full-every" in output


# The index each check's window starts from (the time its records reached their state).
WINDOW_INDEXES = {
    "credits_without_purchase": "ledger_transactions_created",
    "clawbacks_without_reversal": "ledger_transactions_created",
    "wallet_gifts_without_sent_gift": "ledger_transactions_created",
    "purchases_without_credit": "purchases_charged",
    "purchases_without_charge": "purchases_charged",
    "reversals_without_clawback": "purchases_updated",
    "failed_purchases_charged": "purchases_updated",
    "sent_gifts_without_debit": "gift_requests_decided",
    "posted_holds_without_completed_payout": "holds_closed",
    "voided_holds_without_failed_payout": "holds_closed",
    "completed_payouts_without_posted_hold": "payouts_updated",
    "failed_payouts_with_hold_kept": "payouts_updated",
    "payouts_without_bank_payment": "payouts_updated",
    "failed_payouts_paid": "payouts_updated",
}


async def test_every_check_finds_its_window_through_an_index(economy: Economy) -> None:
    """A run between two full ones must not read the history: with sequential scans
    priced out, each check's plan for a window starts from the BRIN index on its
    records' time (migrations wallet 0013, gifting 0004, payment 0009, payout 0004) and
    joins by key, reading no table whole."""
    assert set(WINDOW_INDEXES) == {check.key for check in REGISTRY}
    conn = await asyncpg.connect(economy.reader_url)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            await conn.execute("SET LOCAL enable_seqscan = off")
            now = datetime.now(UTC)
            for check in REGISTRY:
                if isinstance(check, SqlCheck):
                    args: tuple[Any, ...] = (now, now - timedelta(minutes=5), 10)
                    statement = check.statement()
                else:
                    assert isinstance(check, ProviderCheck)
                    args, statement = (now, now - timedelta(minutes=5)), check.sql
                plan = await explain(conn, statement, *args)
                assert "Seq Scan" not in plan, f"{check.key}:\n{plan}"
                assert f"Bitmap Index Scan on {WINDOW_INDEXES[check.key]} " in plan, plan
                # Without a window the bound folds away: the plan is the full run's.
                full = await explain(conn, statement, args[0], None, *args[2:])
                assert "$2 IS NULL" not in full + plan, f"{check.key}:\n{full}"
    finally:
        await conn.close()


async def explain(conn: asyncpg.Connection, statement: str, *args: Any) -> str:
    return "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {statement}", *args))


async def test_provider_checks_come_to_the_same_verdict_a_chunk_at_a_time(
    economy: Economy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider check reads its records and asks the provider about them a chunk at a
    time (its memory does not grow with the history): one record at a time, two, or
    all at once, the same records judged, the same mismatch found, in one snapshot."""
    admin = await asyncpg.connect(economy.database.database_url)
    [request_id] = await admin.fetch(
        "SELECT request_id FROM payment.purchases WHERE status = 'completed' AND user_id = ANY($1)"
        " ORDER BY charged_at LIMIT 1",
        list(economy.ours),
    )
    conn = await asyncpg.connect(economy.reader_url)
    try:  # a completed purchase the provider now says it declined: a mismatch
        assert await admin.execute(SET_CHARGE_OUTCOME, request_id[0], "declined") == "UPDATE 1"
        verdicts: dict[int, list[Result]] = {}
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            context = Context(datetime.now(UTC), providers(), examples=None)
            for chunk in (ProviderCheck.CHUNK, 1, 2):  # the default's verdict first
                monkeypatch.setattr(ProviderCheck, "CHUNK", chunk)
                verdicts[chunk] = [
                    await check.run(conn, context)
                    for check in REGISTRY
                    if isinstance(check, ProviderCheck)
                ]
    finally:
        await admin.execute(SET_CHARGE_OUTCOME, request_id[0], "approved")
        await admin.close()
        await conn.close()

    whole, *chunked = verdicts.values()
    for results in chunked:
        assert [(r.judged, r.mismatches, r.examples) for r in results] == [
            (r.judged, r.mismatches, r.examples) for r in whole
        ]
    charged = next(r for r in whole if r.check.key == "purchases_without_charge")
    assert charged.judged > 2  # more than one chunk of one and of two
    ours = [f for f in charged.examples if f"(request {request_id[0]})" in f]
    assert len(ours) == 1 and ours[0].endswith(": the provider says declined"), ours
