"""`coinstream trace REQUEST_ID`, run as an operator runs it (the read-only database role,
the operator's Kafka principal), against real Kafka and PostgreSQL: payment, wallet and
gifting run in this process and handle real requests first."""

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack import Endpoints
from services.gifting.main import create_app as create_gifting
from services.gifting.settings import GiftingSettings
from services.payment.main import create_app as create_payment
from services.payment.settings import PaymentSettings
from services.wallet.main import create_app as create_wallet
from services.wallet.settings import WalletSettings
from shared import topics
from tests.integration.gifting_support import fund, gift_request, one_outcome, send_gifts
from tests.support import TopicReader, eventually, in_process, publish, purchase_request, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COINSTREAM = ROOT / ".venv" / "bin" / "coinstream"
READ = (
    topics.COINS_CREDITED,
    topics.GIFT_SENT,
    topics.GIFT_REJECTED,
    topics.dlq(topics.GIFT_REQUESTED),
)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def journey(self) -> dict[str, Any]:
        body = json.loads(self.stdout)
        assert isinstance(body, dict)
        return body


@dataclass(frozen=True)
class Stack:
    infra: Endpoints
    reader_url: str

    async def trace(self, request_id: str, *args: str) -> Ran:
        """The real command in a process of its own, as an operator runs it."""
        process = await asyncio.create_subprocess_exec(
            str(COINSTREAM),
            "trace",
            request_id,
            *args,
            cwd=ROOT,
            env={
                **os.environ,
                **self.infra.kafka().environment(),
                "DATABASE_URL": self.reader_url,
                "COLUMNS": "220",
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(90):
            out, err = await process.communicate()
        assert process.returncode is not None
        return Ran(process.returncode, out.decode(), err.decode())

    async def settled(self, request_id: str) -> dict[str, Any]:
        """The journey once no service still has it pending (outboxes marked published)."""

        async def done() -> dict[str, Any] | None:
            ran = await self.trace(request_id, "--json", "--no-dead-letters")
            journey = ran.journey()
            return None if journey["verdict"].startswith("pending") else journey

        return await eventually(done, timeout_s=30)


@pytest.fixture(scope="module")
async def stack(
    service_settings: Callable[..., Any], infra: Any, reader_url: str, operator_token: str
) -> AsyncIterator[Stack]:
    # One of each for the module: each start costs seconds of consumer-group rebalancing.
    async with (
        in_process(create_payment(service_settings(PaymentSettings)), token=operator_token),
        in_process(create_wallet(service_settings(WalletSettings)), token=operator_token),
        in_process(create_gifting(service_settings(GiftingSettings))),
    ):
        yield Stack(infra, reader_url)


@pytest.fixture
async def reader(infra: Any) -> AsyncIterator[TopicReader]:
    async with TopicReader(infra, READ) as reader:
        yield reader


def _where(journey: dict[str, Any], kind: str) -> set[tuple[str, str]]:
    if kind == "records":
        return {(r["service"], r["table"]) for r in journey["records"]}
    if kind == "events":
        return {(e["service"], e["topic"]) for e in journey["events"]}
    return {(c["service"], c["topic"]) for c in journey["consumed"]}


async def test_a_completed_purchase_shows_payment_wallet_and_their_events(
    stack: Stack, reader: TopicReader
) -> None:
    request = purchase_request(user_id=unique("buyer"))
    await publish(stack.infra, topics.PURCHASE_REQUESTED, [(request["user_id"], request)])
    await reader.wait_for(topics.COINS_CREDITED, request_id=request["request_id"])

    journey = await stack.settled(request["request_id"])
    ran = await stack.trace(request["request_id"], "--no-dead-letters")  # as a person reads it

    assert journey["verdict"] == "completed"
    assert {(r["table"], r["state"]) for r in journey["records"]} == {
        ("purchases", "completed"),
        ("ledger_transactions", "posted"),
    }
    [purchase] = [r for r in journey["records"] if r["table"] == "purchases"]
    assert (purchase["fields"]["coins"], purchase["fields"]["price_minor"]) == (70, "99")
    assert _where(journey, "events") == {
        ("payment", topics.PURCHASE_COMPLETED),
        ("wallet", topics.COINS_CREDITED),
    }
    assert all(e["published_at"] for e in journey["events"])
    # payment's purchases table is its record of the request; the wallet's inbox of the event
    assert _where(journey, "consumed") == {("wallet", topics.PURCHASE_COMPLETED)}
    times = [step["at"] for step in journey["timeline"]]
    assert times == sorted(times)
    assert journey["dead_letters"] == []
    assert ran.returncode == 0, ran.stderr
    assert "verdict: completed" in ran.stdout
    assert topics.COINS_CREDITED in ran.stdout
    assert request["payment_method"] not in ran.stdout + json.dumps(journey)  # never shown


async def test_a_gift_shows_gifting_and_the_wallet_and_a_refusal_its_reason(
    stack: Stack, reader: TopicReader
) -> None:
    sender, creator, poor = unique("viewer"), unique("creator"), unique("poor")
    await fund(stack.infra, reader, {sender: 100})
    sent, refused = gift_request(sender, creator, "rose", 2), gift_request(poor, creator)
    await send_gifts(stack.infra, [sent, refused])
    assert (await one_outcome(reader, sent))[0] == topics.GIFT_SENT
    assert (await one_outcome(reader, refused))[0] == topics.GIFT_REJECTED

    journey = await stack.settled(sent["request_id"])
    failed = await stack.trace(refused["request_id"], "--json", "--no-dead-letters")

    assert journey["verdict"] == "completed"
    assert {(r["service"], r["table"], r["state"]) for r in journey["records"]} == {
        ("gifting", "gift_requests", "sent"),
        ("wallet", "ledger_transactions", "posted"),
    }
    assert {
        ("gifting", topics.GIFT_DEBIT_REQUESTED),
        ("wallet", topics.GIFT_DEBIT_ANSWERED),
        ("gifting", topics.GIFT_SENT),
        ("wallet", topics.COINS_DEBITED),
        ("wallet", topics.DIAMONDS_CREDITED),
    } <= _where(journey, "events")
    assert ("wallet", topics.GIFT_DEBIT_REQUESTED) in _where(journey, "consumed")
    assert failed.returncode == 0
    assert failed.journey()["verdict"] == "failed: insufficient_coins"


async def test_a_dead_lettered_request_is_found_by_the_request_id_in_its_body(
    stack: Stack, reader: TopicReader
) -> None:
    sender = unique("viewer")
    wrong_type = {**gift_request(sender, unique("creator")), "quantity": "2"}
    cut_short = gift_request(sender, unique("creator"))
    broken = json.dumps(cut_short).encode()[:60]  # not JSON any more, request_id kept
    assert cut_short["request_id"].encode() in broken
    await publish(stack.infra, topics.GIFT_REQUESTED, [(sender, wrong_type), (sender, broken)])
    dlq = topics.dlq(topics.GIFT_REQUESTED)
    await reader.wait_for(dlq, request_id=wrong_type["request_id"])

    async def cut_short_dead() -> bool | None:
        return any(r.topic == dlq and r.value == broken for r in reader.records) or None

    await eventually(cut_short_dead, timeout_s=30)

    typed = await stack.trace(wrong_type["request_id"], "--json")
    cut = await stack.trace(cut_short["request_id"], "--json")
    text = await stack.trace(wrong_type["request_id"])

    assert typed.returncode == 0, typed.stderr
    journey = typed.journey()
    assert journey["records"] == [] and journey["events"] == []
    [letter] = journey["dead_letters"]
    assert (letter["topic"], letter["service"]) == (topics.GIFT_REQUESTED, "gifting")
    assert journey["verdict"] == f"dead-lettered: {letter['reason']}"
    assert letter["coordinates"].startswith(f"{dlq}:")
    assert cut.returncode == 0
    assert [d["topic"] for d in cut.journey()["dead_letters"]] == [topics.GIFT_REQUESTED]
    assert text.returncode == 0 and letter["coordinates"] in text.stdout
    assert '"quantity"' not in text.stdout  # the body is matched, never printed


async def test_an_unknown_request_id_exits_1(stack: Stack) -> None:
    unknown = unique("nobody")

    as_json = await stack.trace(unknown, "--json")
    as_text = await stack.trace(unknown, "--no-dead-letters")

    assert as_json.returncode == 1
    assert as_json.journey()["verdict"] == "unknown request_id"
    assert as_json.journey()["warnings"] == []
    assert as_text.returncode == 1
    assert "verdict: unknown request_id" in as_text.stdout
