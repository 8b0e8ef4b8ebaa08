"""Creator cash-out, payout and wallet in this process, against real Kafka and PostgreSQL."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from devstack import Endpoints
from services.payout.main import create_app as create_payout
from services.payout.settings import PayoutSettings
from services.wallet.main import create_app as create_wallet
from services.wallet.settings import WalletSettings
from shared import acl, topics
from shared.contracts import DiamondsHoldRequested, PayoutFailed
from shared.money import default_usd_rates
from tests.integration.wallet_support import as_message, balance_of, give_diamonds
from tests.support import TopicReader, eventually, in_process, publish, run_audit, unique

pytestmark = pytest.mark.integration

OUTCOMES = (topics.PAYOUT_COMPLETED, topics.PAYOUT_FAILED)


@dataclass
class Cashier:
    wallet: httpx.AsyncClient
    payout: httpx.AsyncClient
    infra: Endpoints
    database_url: str


@pytest.fixture(scope="module")
async def cashier(
    service_settings: Callable[..., Any], infra: Any, database_url: str, operator_token: str
) -> AsyncIterator[Cashier]:
    wallet_app = create_wallet(service_settings(WalletSettings))
    # KWD (three decimal places) beside the default USD, EUR and JPY.
    rates = {**default_usd_rates(), "KWD": Decimal("3.26")}
    payout_app = create_payout(
        service_settings(PayoutSettings, reconcile_interval_s=0.2, usd_per_unit=rates)
    )
    async with (
        in_process(wallet_app, token=operator_token) as wallet,
        in_process(payout_app, token=operator_token) as payout,
    ):
        yield Cashier(wallet, payout, infra, database_url)


@pytest.fixture
async def reader(infra: Any) -> AsyncIterator[TopicReader]:
    async with TopicReader(infra, (*OUTCOMES, topics.dlq(topics.PAYOUT_REQUESTED))) as reader:
        yield reader


async def creator(
    cashier: Cashier,
    *,
    diamonds: int = 0,
    verified: bool = True,
    method: str = "po_bank_ok",
    currency: str = "USD",
) -> str:
    creator_id = unique("creator")
    if diamonds:
        await give_diamonds(cashier.database_url, creator_id, diamonds)
    update = {
        "creator_id": creator_id,
        "verified": verified,
        "payout_method": method,
        "currency": currency,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    await publish(cashier.infra, topics.CREATOR_UPDATED, [(creator_id, update)])
    # No event answers an update (another topic, no ordering): wait until it is kept.
    await eventually(lambda: _known_creator(cashier.database_url, creator_id))
    return creator_id


async def _known_creator(database_url: str, creator_id: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(
            await conn.fetchval("SELECT 1 FROM payout.creators WHERE creator_id = $1", creator_id)
        )
    finally:
        await conn.close()


def payout_request(creator_id: str, diamonds: int) -> dict[str, Any]:
    return {
        "request_id": unique("payout"),
        "creator_id": creator_id,
        "diamonds": diamonds,
        "occurred_at": datetime.now(UTC).isoformat(),
    }


async def cash_out(
    cashier: Cashier, reader: TopicReader, requests: list[dict[str, Any]], *, together: bool = False
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Publish payout requests; every outcome of each, once each has one. `together`:
    in one produce request, so the service consumes them in one batch."""
    if together:
        await publish_in_one_batch(cashier.infra, [(r["creator_id"], r) for r in requests])
    else:
        messages: list[tuple[str, bytes | dict[str, Any]]] = [
            (r["creator_id"], r) for r in requests
        ]
        await publish(cashier.infra, topics.PAYOUT_REQUESTED, messages)
    wanted = {r["request_id"] for r in requests}

    async def all_answered() -> dict[str, list[tuple[str, dict[str, Any]]]] | None:
        found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for topic in OUTCOMES:
            for body in reader.matching(topic):
                if body.get("request_id") in wanted:
                    found.setdefault(body["request_id"], []).append((topic, body))
        return found if len(found) == len(wanted) else None

    return await eventually(all_answered)


async def publish_in_one_batch(infra: Endpoints, messages: list[tuple[str, Any]]) -> None:
    kafka = infra.kafka(acl.owner_of(topics.PAYOUT_REQUESTED))
    producer = AIOKafkaProducer(**kafka.client_options(), linger_ms=100)
    await producer.start()
    try:
        sent = [
            await producer.send(topics.PAYOUT_REQUESTED, json.dumps(v).encode(), key=k.encode())
            for k, v in messages
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def settled_balance(cashier: Cashier, creator_id: str, diamonds: int) -> dict[str, Any]:
    """The creator's balance once nothing is on hold any more and diamonds are as expected."""

    async def settled() -> dict[str, Any] | None:
        body = await balance_of(cashier.wallet, creator_id)
        return body if body["diamonds_on_hold"] == 0 and body["diamonds"] == diamonds else None

    return await eventually(settled)


async def test_a_verified_creator_is_paid_and_the_diamonds_leave(
    cashier: Cashier, reader: TopicReader
) -> None:
    star = await creator(cashier, diamonds=5_000)
    request = payout_request(star, 2_001)
    [(topic, completed)] = (await cash_out(cashier, reader, [request]))[request["request_id"]]

    assert topic == topics.PAYOUT_COMPLETED
    # 2,001 diamonds x $0.005 = $10.005: paid $10.00, rounded down.
    assert completed["amount"] == {"amount_minor": 1000, "currency": "USD"}
    assert completed["diamonds"] == 2_001
    await settled_balance(cashier, star, 5_000 - 2_001)
    status = (await cashier.payout.get(f"/v1/payouts/{request['request_id']}")).json()
    assert status == {
        "request_id": request["request_id"],
        "creator_id": star,
        "status": "completed",
        "reason": None,
        "payout_id": completed["payout_id"],
        "diamonds": 2_001,
        "amount": {"amount_minor": 1000, "currency": "USD"},
        "created_at": status["created_at"],
    }
    listed = (await cashier.payout.get(f"/v1/creators/{star}/payouts")).json()["items"]
    assert [item["request_id"] for item in listed] == [request["request_id"]]
    assert (await cashier.payout.get(f"/v1/payouts/{unique('nope')}")).status_code == 404


async def test_a_eur_creator_is_paid_in_euros_rounded_down(
    cashier: Cashier, reader: TopicReader
) -> None:
    star = await creator(cashier, diamonds=4_000, currency="EUR")
    request = payout_request(star, 4_000)
    [(_, completed)] = (await cash_out(cashier, reader, [request]))[request["request_id"]]
    # $20.00 at 1.08 USD per EUR = 18.5185... EUR: 18.51 EUR.
    assert completed["amount"] == {"amount_minor": 1851, "currency": "EUR"}


async def test_each_currency_is_paid_in_its_own_minor_unit_rounded_down(
    cashier: Cashier, reader: TopicReader
) -> None:
    """ISO 4217 decides the decimal places: yen have none, dinars three. Counting
    either in cents would pay 100x too much (JPY) or 10x too little (KWD)."""
    yen = await creator(cashier, diamonds=4_001, currency="JPY")
    dinar = await creator(cashier, diamonds=4_001, currency="KWD")
    requests = [payout_request(yen, 4_001), payout_request(dinar, 4_001)]
    found = await cash_out(cashier, reader, requests)

    # 4,001 diamonds are $20.005: 2985.82... yen -> ¥2985; 6.13650... KWD -> 6.136 KWD.
    [(_, to_yen)], [(_, to_dinar)] = (found[r["request_id"]] for r in requests)
    assert to_yen["amount"] == {"amount_minor": 2985, "currency": "JPY"}
    assert to_dinar["amount"] == {"amount_minor": 6136, "currency": "KWD"}
    status = (await cashier.payout.get(f"/v1/payouts/{requests[0]['request_id']}")).json()
    assert status["amount"] == {"amount_minor": 2985, "currency": "JPY"}
    await settled_balance(cashier, yen, 0)
    await settled_balance(cashier, dinar, 0)


async def test_every_refusal_reason_reaches_kafka(cashier: Cashier, reader: TopicReader) -> None:
    unverified = await creator(cashier, diamonds=5_000, verified=False)
    rich = await creator(cashier, diamonds=400_000)
    poor = await creator(cashier, diamonds=2_500)
    rejected = await creator(cashier, diamonds=3_000, method="po_bank_rejected")
    odd_currency = await creator(cashier, diamonds=3_000, currency="CHF")  # no rate for it
    cases = {
        "not_verified": payout_request(unverified, 2_000),
        "not_verified (unknown creator)": payout_request(unique("nobody"), 2_000),
        "below_minimum": payout_request(rich, 1_999),
        "insufficient_diamonds": payout_request(poor, 3_000),
        "provider_rejected": payout_request(rejected, 2_000),
        "invalid_request (no diamonds)": payout_request(rich, 0),
        "invalid_request (absurd)": payout_request(rich, 10**30),
        "invalid_request (currency)": payout_request(odd_currency, 2_000),
    }
    found = await cash_out(cashier, reader, list(cases.values()))
    # $750 today, then $500 more is over the $1,000 daily limit.
    first, over = payout_request(rich, 150_000), payout_request(rich, 100_000)
    limits = await cash_out(cashier, reader, [first, over])

    assert {
        case: [(topic, body["reason"]) for topic, body in found[r["request_id"]]]
        for case, r in cases.items()
    } == {case: [(topics.PAYOUT_FAILED, case.split(" ")[0])] for case in cases}
    assert [t for t, _ in limits[first["request_id"]]] == [topics.PAYOUT_COMPLETED]
    assert [b["reason"] for _, b in limits[over["request_id"]]] == ["daily_limit_exceeded"]
    # Rejected by the bank: the diamonds are released back.
    await settled_balance(cashier, rejected, 3_000)
    await settled_balance(cashier, poor, 2_500)
    await settled_balance(cashier, rich, 400_000 - 150_000)


async def test_a_retry_in_a_batch_with_a_new_request_counts_once_toward_the_daily_limit(
    cashier: Cashier, reader: TopicReader
) -> None:
    rich = await creator(cashier, diamonds=400_000)
    # $200 paid today, then $700 more is within the $1,000 limit: counting the retry's
    # $200 twice would refuse it ($200 + $200 fits, but $400 + $700 does not).
    first, new = payout_request(rich, 40_000), payout_request(rich, 140_000)
    await cash_out(cashier, reader, [first])
    found = await cash_out(cashier, reader, [first, new], together=True)

    assert [t for t, _ in found[first["request_id"]]] == [topics.PAYOUT_COMPLETED]
    assert [t for t, _ in found[new["request_id"]]] == [topics.PAYOUT_COMPLETED]
    await settled_balance(cashier, rich, 400_000 - 180_000)


async def test_a_flaky_bank_is_reconciled_and_pays_exactly_once(
    cashier: Cashier, reader: TopicReader
) -> None:
    star = await creator(cashier, diamonds=2_000, method="po_bank_flaky")
    request = payout_request(star, 2_000)
    [(topic, completed)] = (await cash_out(cashier, reader, [request]))[request["request_id"]]

    assert topic == topics.PAYOUT_COMPLETED
    await settled_balance(cashier, star, 0)
    conn = await asyncpg.connect(cashier.database_url)
    try:
        transfers = await conn.fetch(
            "SELECT outcome, calls FROM payout.simulated_bank_transfers WHERE payout_id = $1",
            completed["payout_id"],
        )
    finally:
        await conn.close()
    assert [(t["outcome"], t["calls"]) for t in transfers] == [("paid", 1)]


async def test_two_payouts_racing_for_the_same_diamonds_are_not_both_paid(
    cashier: Cashier, reader: TopicReader
) -> None:
    star = await creator(cashier, diamonds=3_000)
    requests = [payout_request(star, 2_000), payout_request(star, 2_000)]
    found = await cash_out(cashier, reader, requests)

    outcomes = sorted(topic for r in requests for topic, _ in found[r["request_id"]])
    assert outcomes == [topics.PAYOUT_COMPLETED, topics.PAYOUT_FAILED]
    failed = next(
        b for r in requests for t, b in found[r["request_id"]] if t == topics.PAYOUT_FAILED
    )
    assert failed["reason"] == "insufficient_diamonds"
    await settled_balance(cashier, star, 1_000)


async def test_a_repeated_request_pays_once_and_a_conflicting_one_is_dead_lettered(
    cashier: Cashier, reader: TopicReader
) -> None:
    star = await creator(cashier, diamonds=5_000)
    request = payout_request(star, 2_000)
    await cash_out(cashier, reader, [request, request])
    conflicting = {**request, "diamonds": 3_000}
    later = payout_request(star, 2_000)
    await cash_out(cashier, reader, [request, conflicting, later])
    [dead] = await reader.wait_for(
        topics.dlq(topics.PAYOUT_REQUESTED), request_id=request["request_id"], diamonds=3_000
    )

    assert len(reader.matching(topics.PAYOUT_COMPLETED, request_id=request["request_id"])) == 1
    assert dead["diamonds"] == 3_000
    await settled_balance(cashier, star, 1_000)


async def test_the_audit_names_a_hold_left_open_past_its_deadline(
    cashier: Cashier, infra: Any
) -> None:
    star = await creator(cashier, diamonds=2_000)
    late = DiamondsHoldRequested(
        request_id=unique("late"),
        payout_id=unique("po"),
        creator_id=star,
        diamonds=2_000,
        deadline=datetime.now(UTC) - timedelta(minutes=1),
    )
    await publish(cashier.infra, topics.DIAMONDS_HOLD_REQUESTED, [as_message(late)])
    await eventually(
        lambda: _on_hold(cashier, star, 2_000),
    )
    returncode, report = await run_audit(cashier.database_url)
    # Released again, as the payout service would: the session's ledger stays whole.
    failed = PayoutFailed(
        request_id=late.request_id,
        creator_id=star,
        reason="provider_rejected",
        payout_id=late.payout_id,
        diamonds=late.diamonds,
    )
    await publish(cashier.infra, topics.PAYOUT_FAILED, [as_message(failed)])
    await settled_balance(cashier, star, 2_000)

    assert returncode == 1
    assert "no hold open past its deadline" in report and late.request_id in report
    returncode, report = await run_audit(cashier.database_url)
    assert returncode == 0, report


async def _on_hold(cashier: Cashier, creator_id: str, diamonds: int) -> bool:
    return bool((await balance_of(cashier.wallet, creator_id))["diamonds_on_hold"] == diamonds)
