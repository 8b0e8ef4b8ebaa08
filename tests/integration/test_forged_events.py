"""Events that name state a service never created, or do not match it, change nothing.

Forged events are written as the operator (a super user, the only principal the Kafka
ACLs let write another service's topics): wallet, payout and gifting check each event
against what they recorded and dead-letter what does not match (`unknown_state`,
`state_mismatch`), while a redelivery of a genuine event stays a silent no-op.
Wallet, payout and gifting run in this process against real Kafka and PostgreSQL.
"""

import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from devstack import Endpoints
from services.gifting.main import create_app as create_gifting
from services.gifting.settings import GiftingSettings
from services.payout.main import create_app as create_payout
from services.payout.settings import PayoutSettings
from services.wallet.main import create_app as create_wallet
from services.wallet.settings import WalletSettings
from shared import acl, topics
from shared.contracts import (
    DiamondsHoldAnswered,
    DiamondsHoldRequested,
    Event,
    GiftDebitAnswered,
    Message,
    PayoutCompleted,
    PayoutFailed,
    PurchaseReversed,
)
from shared.money import Money
from tests.integration.gifting_support import fund, gift_request, send_gifts
from tests.integration.wallet_support import as_message, completed, give_diamonds
from tests.support import TopicReader, eventually, in_process, publish, unique

pytestmark = pytest.mark.integration

CHECKED = (
    topics.PAYOUT_COMPLETED,
    topics.PAYOUT_FAILED,
    topics.DIAMONDS_HOLD_ANSWERED,
    topics.GIFT_DEBIT_ANSWERED,
    topics.PURCHASE_REVERSED,
)
READ = (
    *CHECKED,
    *(topics.dlq(topic) for topic in CHECKED),
    topics.COINS_CREDITED,
    topics.COINS_CLAWED_BACK,
)


@dataclass
class Stack:
    infra: Endpoints
    database_url: str


@pytest.fixture(scope="module")
async def stack(
    service_settings: Callable[..., Any], infra: Any, database_url: str
) -> AsyncIterator[Stack]:
    wallet_app = create_wallet(service_settings(WalletSettings))
    payout_app = create_payout(service_settings(PayoutSettings, reconcile_interval_s=0.2))
    gifting_app = create_gifting(service_settings(GiftingSettings))
    async with in_process(wallet_app), in_process(payout_app), in_process(gifting_app):
        yield Stack(infra, database_url)


@pytest.fixture
async def reader(infra: Any) -> AsyncIterator[TopicReader]:
    async with TopicReader(infra, READ) as reader:
        yield reader


# --- helpers ---------------------------------------------------------------------------


async def forge(stack: Stack, topic: str, events: Iterable[Message]) -> None:
    """Publish events as the operator, bypassing the ACLs that keep other principals out."""
    await publish(stack.infra, topic, [as_message(e) for e in events], principal=acl.OPERATOR)


def dead_letters(reader: TopicReader, topic: str) -> dict[str, set[str]]:
    """event_id -> the dlq.reason of each time it was dead-lettered from `topic`.

    Test sessions running at the same time share the topics, each with its own consumer
    groups and database, so another session's services see this session's events too
    and may dead-letter them as well: the tests look for the reason they expect among
    those found, and judge effects by this session's database.
    """
    found: dict[str, set[str]] = {}
    for record in reader.records:
        if record.topic != topics.dlq(topic):
            continue
        try:  # earlier sessions dead-lettered all sorts, bad JSON included
            event_id = json.loads(record.value or b"")["event_id"]
        except (ValueError, TypeError, KeyError):
            continue
        headers = {name: value.decode(errors="replace") for name, value in record.headers}
        found.setdefault(str(event_id), set()).add(headers.get("dlq.reason", ""))
    return found


async def dead_lettered(reader: TopicReader, topic: str, expected: dict[str, str]) -> None:
    """Wait until every event of `expected` (event_id -> reason) is dead-lettered with
    its reason; fails with what was seen instead after the deadline."""

    async def all_there() -> bool:
        found = dead_letters(reader, topic)
        return all(reason in found.get(i, set()) for i, reason in expected.items())

    try:
        await eventually(all_there, timeout_s=60)
    except AssertionError:
        found = dead_letters(reader, topic)
        seen = {i: found.get(i) for i in expected}
        raise AssertionError(f"expected dead letters {expected}, saw {seen}") from None


def not_refused_here(reader: TopicReader, topic: str, event_id: str) -> bool:
    """For a payout outcome naming a hold of this session: true unless this session's
    wallet dead-lettered it (another session's wallet holds nothing of this session's
    creators, so it could only say `unknown_state`)."""
    return "state_mismatch" not in dead_letters(reader, topic).get(event_id, set())


async def fetch(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def diamonds(stack: Stack, creator_id: str) -> tuple[int, int]:
    """The creator's (available, on hold) whole diamonds, read from the wallet's ledger."""
    rows = await fetch(
        stack.database_url,
        "SELECT kind, balance FROM wallet.accounts WHERE owner_id = $1",
        creator_id,
    )
    units = {row["kind"]: int(row["balance"]) for row in rows}
    available, on_hold = units.get("user_diamonds", 0), units.get("user_diamond_hold", 0)
    assert available % 10_000 == on_hold % 10_000 == 0  # these tests move whole diamonds
    return available // 10_000, on_hold // 10_000


async def coins(stack: Stack, user_id: str) -> int:
    rows = await fetch(
        stack.database_url,
        "SELECT balance FROM wallet.accounts WHERE owner_id = $1 AND kind = 'user_coins'",
        user_id,
    )
    return int(rows[0]["balance"]) if rows else 0


async def hold_status(stack: Stack, request_id: str) -> str | None:
    rows = await fetch(
        stack.database_url, "SELECT status FROM wallet.holds WHERE request_id = $1", request_id
    )
    return str(rows[0]["status"]) if rows else None


async def payout_row(stack: Stack, request_id: str) -> dict[str, Any] | None:
    rows = await fetch(
        stack.database_url,
        "SELECT payout_id, status, reason FROM payout.payouts WHERE request_id = $1",
        request_id,
    )
    return dict(rows[0]) if rows else None


async def bank_calls(stack: Stack, payout_id: str) -> list[tuple[str, int]]:
    rows = await fetch(
        stack.database_url,
        "SELECT outcome, calls FROM payout.simulated_bank_transfers WHERE payout_id = $1",
        payout_id,
    )
    return [(row["outcome"], row["calls"]) for row in rows]


async def verified_creator(stack: Stack, *, diamonds: int, verified: bool = True) -> str:
    creator_id = unique("creator")
    if diamonds:
        await give_diamonds(stack.database_url, creator_id, diamonds)
    update = {
        "creator_id": creator_id,
        "verified": verified,
        "payout_method": "po_bank_ok",
        "currency": "USD",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    await publish(stack.infra, topics.CREATOR_UPDATED, [(creator_id, update)])

    async def known() -> bool:
        return bool(
            await fetch(
                stack.database_url,
                "SELECT 1 FROM payout.creators WHERE creator_id = $1",
                creator_id,
            )
        )

    await eventually(known)
    return creator_id


async def cash_out(stack: Stack, creator_id: str, amount: int) -> dict[str, Any]:
    """Request a payout as an app does; returns it as this session's payout service
    recorded it, once it has an outcome."""
    request_id = unique("payout")
    request = {
        "request_id": request_id,
        "creator_id": creator_id,
        "diamonds": amount,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    await publish(stack.infra, topics.PAYOUT_REQUESTED, [(creator_id, request)])

    async def outcome() -> dict[str, Any] | None:
        payout = await payout_row(stack, request_id)
        return payout if payout and payout["status"] in ("completed", "failed") else None

    return {"request_id": request_id, **await eventually(outcome, timeout_s=60)}


async def gift_outcome(stack: Stack, request: dict[str, Any]) -> tuple[str, str | None]:
    """Send a gift request as an app does; its status and reason in this session."""
    await send_gifts(stack.infra, [request])

    async def decided() -> tuple[str, str | None] | None:
        rows = await fetch(
            stack.database_url,
            "SELECT status, reason FROM gifting.gift_requests WHERE request_id = $1",
            request["request_id"],
        )
        done = rows and rows[0]["status"] != "pending"
        return (rows[0]["status"], rows[0]["reason"]) if done else None

    return await eventually(decided, timeout_s=60)


def event_of(model: type[Event], body: dict[str, Any]) -> Event:
    """A message read from Kafka, as its model (to publish it again unchanged)."""
    return model.model_validate_json(json.dumps(body))


# --- wallet: payout outcomes against its holds -----------------------------------------


async def test_payout_outcomes_that_do_not_match_the_hold_change_no_balance_and_no_hold(
    stack: Stack, reader: TopicReader
) -> None:
    star = unique("creator")
    await give_diamonds(stack.database_url, star, 3_000)
    hold = DiamondsHoldRequested(
        request_id=unique("payout"),
        payout_id=unique("po"),
        creator_id=star,
        diamonds=2_000,
        deadline=datetime.now(UTC) + timedelta(hours=1),
    )
    # As the payout service asks for it (its own principal); payout itself never
    # recorded this request, so it dead-letters the wallet's answer (tested below).
    await publish(stack.infra, topics.DIAMONDS_HOLD_REQUESTED, [as_message(hold)])

    async def on_hold() -> bool:
        return await diamonds(stack, star) == (1_000, 2_000)

    await eventually(on_hold)

    def failed(**changes: Any) -> PayoutFailed:
        return PayoutFailed(
            **{
                "request_id": hold.request_id,
                "creator_id": star,
                "reason": "provider_rejected",
                "payout_id": hold.payout_id,
                "diamonds": 2_000,
                **changes,
            }
        )

    def paid(**changes: Any) -> PayoutCompleted:
        return PayoutCompleted(
            **{
                "request_id": hold.request_id,
                "creator_id": star,
                "payout_id": hold.payout_id,
                "diamonds": 2_000,
                "amount": Money(amount_minor=1000, currency="USD"),
                **changes,
            }
        )

    forged_failures = [
        (failed(payout_id=unique("po")), "state_mismatch"),  # another payout
        (failed(diamonds=1_000), "state_mismatch"),  # another amount
        (failed(payout_id=None, diamonds=0), "state_mismatch"),  # names no payout
        (failed(request_id=unique("payout")), "unknown_state"),  # a hold never placed
    ]
    forged_payments = [
        (paid(payout_id=unique("po")), "state_mismatch"),
        (paid(diamonds=3_000), "state_mismatch"),
        (paid(request_id=unique("payout")), "unknown_state"),
    ]
    await forge(stack, topics.PAYOUT_FAILED, [e for e, _ in forged_failures])
    await forge(stack, topics.PAYOUT_COMPLETED, [e for e, _ in forged_payments])

    for topic, forged in (
        (topics.PAYOUT_FAILED, forged_failures),
        (topics.PAYOUT_COMPLETED, forged_payments),
    ):
        expected = {e.event_id: reason for e, reason in forged}
        await dead_lettered(reader, topic, expected)
    assert await diamonds(stack, star) == (1_000, 2_000)
    assert await hold_status(stack, hold.request_id) == "open"
    # The wallet's answer named a payout the payout service never asked for.
    await reader.wait_for(topics.DIAMONDS_HOLD_ANSWERED, request_id=hold.request_id)
    await dead_lettered(reader, topics.DIAMONDS_HOLD_ANSWERED, _answers(reader, hold.request_id))
    assert await payout_row(stack, hold.request_id) is None

    # The genuine outcome still releases the hold; delivered again, it is a no-op, not
    # a dead letter (the forged one after it, same partition, proves it was processed).
    genuine = failed()
    await publish(stack.infra, topics.PAYOUT_FAILED, [as_message(genuine)] * 2)
    marker = failed(payout_id=unique("po"))
    await forge(stack, topics.PAYOUT_FAILED, [marker])
    await dead_lettered(reader, topics.PAYOUT_FAILED, {marker.event_id: "state_mismatch"})
    assert not_refused_here(reader, topics.PAYOUT_FAILED, genuine.event_id)
    assert await diamonds(stack, star) == (3_000, 0)
    assert await hold_status(stack, hold.request_id) == "voided"

    # Released, the hold cannot be paid out afterwards.
    late = paid()
    await forge(stack, topics.PAYOUT_COMPLETED, [late])
    await dead_lettered(reader, topics.PAYOUT_COMPLETED, {late.event_id: "state_mismatch"})
    assert await diamonds(stack, star) == (3_000, 0)
    assert await hold_status(stack, hold.request_id) == "voided"


def _answers(reader: TopicReader, request_id: str) -> dict[str, str]:
    """Every hold answer naming the request, each to be dead-lettered as unknown_state."""
    return {
        body["event_id"]: "unknown_state"
        for body in reader.matching(topics.DIAMONDS_HOLD_ANSWERED, request_id=request_id)
    }


async def test_a_paid_payout_cannot_be_released_by_a_forged_failure(
    stack: Stack, reader: TopicReader
) -> None:
    star = await verified_creator(stack, diamonds=5_000)
    done = await cash_out(stack, star, 2_000)
    request_id = done["request_id"]
    assert done["status"] == "completed"

    async def posted() -> bool:
        return await hold_status(stack, request_id) == "posted"

    await eventually(posted)
    forged = PayoutFailed(
        request_id=request_id,
        creator_id=star,
        reason="provider_rejected",
        payout_id=done["payout_id"],
        diamonds=2_000,
    )
    await forge(stack, topics.PAYOUT_FAILED, [forged])

    await dead_lettered(reader, topics.PAYOUT_FAILED, {forged.event_id: "state_mismatch"})
    assert await diamonds(stack, star) == (3_000, 0)
    assert await hold_status(stack, request_id) == "posted"


# --- payout: hold answers against its payouts ------------------------------------------


async def test_hold_answers_for_payouts_not_waiting_for_them_change_nothing_in_payout(
    stack: Stack, reader: TopicReader
) -> None:
    star = await verified_creator(stack, diamonds=5_000)
    done = await cash_out(stack, star, 2_000)
    request_id = done["request_id"]
    assert done["status"] == "completed"
    # This session's wallet held the diamonds (a concurrent session's may refuse too).
    [answer] = reader.matching(topics.DIAMONDS_HOLD_ANSWERED, request_id=request_id, held=True)
    genuine = event_of(DiamondsHoldAnswered, answer)
    assert isinstance(genuine, DiamondsHoldAnswered) and genuine.diamonds == 2_000

    def answered(**changes: Any) -> DiamondsHoldAnswered:
        return DiamondsHoldAnswered(
            **{
                "request_id": request_id,
                "payout_id": done["payout_id"],
                "creator_id": star,
                "held": True,
                "diamonds": 2_000,
                **changes,
            }
        )

    forged = [
        (answered(held=False, reason="insufficient_diamonds"), "state_mismatch"),
        (answered(payout_id=unique("po")), "state_mismatch"),
        (answered(diamonds=3_000), "state_mismatch"),
        (answered(request_id=unique("payout")), "unknown_state"),  # never requested
    ]
    # The wallet's answer delivered again first: a no-op, not paid twice.
    await publish(stack.infra, topics.DIAMONDS_HOLD_ANSWERED, [as_message(genuine)])
    await forge(stack, topics.DIAMONDS_HOLD_ANSWERED, [e for e, _ in forged])

    expected = {e.event_id: reason for e, reason in forged}
    await dead_lettered(reader, topics.DIAMONDS_HOLD_ANSWERED, expected)
    assert await payout_row(stack, request_id) == {
        "payout_id": done["payout_id"],
        "status": "completed",
        "reason": None,
    }
    assert await bank_calls(stack, done["payout_id"]) == [("paid", 1)]
    assert await diamonds(stack, star) == (3_000, 0)


async def test_a_hold_answer_for_a_payout_refused_before_its_hold_pays_nothing(
    stack: Stack, reader: TopicReader
) -> None:
    unverified = await verified_creator(stack, diamonds=5_000, verified=False)
    refused = await cash_out(stack, unverified, 2_000)
    request_id = refused.pop("request_id")
    assert (refused["status"], refused["reason"]) == ("failed", "not_verified")
    forged = DiamondsHoldAnswered(
        request_id=request_id,
        payout_id=refused["payout_id"],
        creator_id=unverified,
        held=True,
        diamonds=2_000,
    )
    await forge(stack, topics.DIAMONDS_HOLD_ANSWERED, [forged])

    await dead_lettered(reader, topics.DIAMONDS_HOLD_ANSWERED, {forged.event_id: "state_mismatch"})
    assert await payout_row(stack, request_id) == refused
    assert await bank_calls(stack, refused["payout_id"]) == []
    assert await diamonds(stack, unverified) == (5_000, 0)


# --- gifting: gift-debit answers against its requests ----------------------------------


async def test_gift_debit_answers_for_unknown_or_settled_requests_change_nothing(
    stack: Stack, reader: TopicReader
) -> None:
    sender, creator = unique("viewer"), unique("creator")
    await fund(stack.infra, reader, {sender: 100})
    request = gift_request(sender, creator, "panda", 2)  # 10 coins
    assert await gift_outcome(stack, request) == ("sent", None)
    [answer] = reader.matching(
        topics.GIFT_DEBIT_ANSWERED, request_id=request["request_id"], debited=True
    )
    genuine = event_of(GiftDebitAnswered, answer)

    def answered(**changes: Any) -> GiftDebitAnswered:
        return GiftDebitAnswered(
            **{
                "request_id": request["request_id"],
                "sender_id": sender,
                "creator_id": creator,
                "debited": True,
                "coins": 10,
                **changes,
            }
        )

    unknown = answered(request_id=unique("gift"))  # a request never made
    forged = [
        (unknown, "unknown_state"),
        (answered(debited=False, reason="insufficient_coins", coins=None), "state_mismatch"),
        (answered(coins=1_000), "state_mismatch"),
        (answered(creator_id=unique("creator")), "state_mismatch"),
    ]
    # The wallet's answer delivered again first: a no-op.
    await publish(stack.infra, topics.GIFT_DEBIT_ANSWERED, [as_message(genuine)])
    await forge(stack, topics.GIFT_DEBIT_ANSWERED, [e for e, _ in forged])

    expected = {e.event_id: reason for e, reason in forged}
    await dead_lettered(reader, topics.GIFT_DEBIT_ANSWERED, expected)
    assert not await fetch(
        stack.database_url,
        "SELECT 1 FROM gifting.gift_requests WHERE request_id = $1",
        unknown.request_id,
    )
    assert await _gift(stack, request["request_id"]) == ("sent", None)
    assert await _leaderboard(stack, request["stream_id"]) == [(sender, 10)]
    assert await coins(stack, sender) == 90


async def test_a_debit_answer_for_a_gift_never_sent_to_the_wallet_is_refused(
    stack: Stack, reader: TopicReader
) -> None:
    sender = unique("viewer")
    request = gift_request(sender, sender, "rose")  # a self gift: rejected by gifting
    assert await gift_outcome(stack, request) == ("rejected", "self_gift")
    forged = GiftDebitAnswered(
        request_id=request["request_id"], sender_id=sender, creator_id=sender, debited=True
    )
    await forge(stack, topics.GIFT_DEBIT_ANSWERED, [forged])

    await dead_lettered(reader, topics.GIFT_DEBIT_ANSWERED, {forged.event_id: "state_mismatch"})
    assert await _gift(stack, request["request_id"]) == ("rejected", "self_gift")
    assert await _leaderboard(stack, request["stream_id"]) == []


async def _gift(stack: Stack, request_id: str) -> tuple[str, str | None]:
    [row] = await fetch(
        stack.database_url,
        "SELECT status, reason FROM gifting.gift_requests WHERE request_id = $1",
        request_id,
    )
    return row["status"], row["reason"]


async def _leaderboard(stack: Stack, stream_id: str) -> list[tuple[str, int]]:
    rows = await fetch(
        stack.database_url,
        "SELECT sender_id, coins FROM gifting.leaderboard_entries WHERE stream_id = $1",
        stream_id,
    )
    return [(row["sender_id"], row["coins"]) for row in rows]


# --- wallet: reversals against its credits ---------------------------------------------


async def test_a_reversal_that_does_not_match_its_credit_claws_nothing_back(
    stack: Stack, reader: TopicReader
) -> None:
    user = unique("user")
    purchase = completed(user, coins=70, bonus=7)
    await publish(stack.infra, topics.PURCHASE_COMPLETED, [as_message(purchase)])
    await reader.wait_for(topics.COINS_CREDITED, payment_id=purchase.payment_id)

    def reversed_(**changes: Any) -> PurchaseReversed:
        return PurchaseReversed(
            **{
                "request_id": unique("cb"),
                "payment_id": purchase.payment_id,
                "user_id": user,
                "coins": 77,
                **changes,
            }
        )

    # Another amount (purchased + bonus coins were credited), another user.
    forged = [reversed_(coins=7_000), reversed_(coins=70), reversed_(user_id=unique("user"))]
    await forge(stack, topics.PURCHASE_REVERSED, forged)

    expected = {e.event_id: "state_mismatch" for e in forged}
    await dead_lettered(reader, topics.PURCHASE_REVERSED, expected)
    assert await coins(stack, user) == 77
    # The genuine reversal still claws the coins back.
    genuine = reversed_()
    await publish(stack.infra, topics.PURCHASE_REVERSED, [as_message(genuine)])
    await reader.wait_for(topics.COINS_CLAWED_BACK, payment_id=purchase.payment_id)
    assert await coins(stack, user) == 0
