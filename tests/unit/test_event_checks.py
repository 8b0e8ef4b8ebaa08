"""Events are checked against the state a service recorded (pure rules of each service)."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from services.gifting import domain as gifting
from services.gifting.domain import GiftOrder
from services.payout import domain as payout
from services.payout.domain import Payout
from services.wallet import domain as wallet
from services.wallet.domain import Hold
from shared.contracts import (
    DiamondsHoldAnswered,
    GiftDebitAnswered,
    PayoutCompleted,
    PayoutFailed,
)
from shared.errors import PermanentError
from shared.money import Money

HOLD = Hold("req-1", "po-1", "star", 2_000 * wallet.DIAMOND_UNITS, datetime.now(UTC))


def failed(**changes: Any) -> PayoutFailed:
    fields = {"request_id": "req-1", "creator_id": "star", "reason": "provider_rejected"}
    return PayoutFailed(**{**fields, "payout_id": "po-1", "diamonds": 2_000, **changes})


def paid(**changes: Any) -> PayoutCompleted:
    fields = {"request_id": "req-1", "creator_id": "star", "payout_id": "po-1"}
    amount = Money(amount_minor=1000, currency="USD")
    return PayoutCompleted(**{**fields, "diamonds": 2_000, "amount": amount, **changes})


def reason_of(check: Callable[..., object], *args: Any) -> str:
    """The dead-letter reason `check(*args)` refuses with."""
    with pytest.raises(PermanentError) as raised:
        check(*args)
    return raised.value.reason


def test_the_wallet_closes_a_hold_only_for_its_own_payout_and_amount() -> None:
    assert wallet.settle_hold(HOLD, failed()) == Hold(**{**vars(HOLD), "status": "voided"})
    assert wallet.settle_hold(HOLD, paid()) == Hold(**{**vars(HOLD), "status": "posted"})
    for forged in (failed(payout_id="po-2"), failed(diamonds=1_000), failed(creator_id="x")):
        assert reason_of(wallet.settle_hold, HOLD, forged) == "state_mismatch"
    assert reason_of(wallet.settle_hold, HOLD, failed(payout_id=None, diamonds=0)) == (
        "state_mismatch"
    )
    assert reason_of(wallet.settle_hold, HOLD, paid(diamonds=3_000)) == "state_mismatch"


def test_a_closed_hold_ignores_its_own_outcome_again_and_refuses_the_other() -> None:
    voided = Hold(**{**vars(HOLD), "status": "voided"})
    assert wallet.settle_hold(voided, failed()) is None
    assert reason_of(wallet.settle_hold, voided, paid()) == "state_mismatch"
    posted = Hold(**{**vars(HOLD), "status": "posted"})
    assert wallet.settle_hold(posted, paid()) is None
    assert reason_of(wallet.settle_hold, posted, failed()) == "state_mismatch"


def test_no_hold_is_fine_for_a_payout_refused_before_one_not_for_a_paid_or_rejected_one() -> None:
    assert wallet.settle_hold(None, failed(reason="not_verified")) is None
    assert wallet.settle_hold(None, failed(reason="insufficient_diamonds")) is None
    assert reason_of(wallet.settle_hold, None, failed()) == "unknown_state"
    assert reason_of(wallet.settle_hold, None, paid()) == "unknown_state"


PAYOUT = Payout(
    request_id="req-1",
    payout_id="po-1",
    creator_id="star",
    diamonds=2_000,
    status="holding",
    fingerprint="f",
)


def answer(**changes: Any) -> DiamondsHoldAnswered:
    fields = {"request_id": "req-1", "payout_id": "po-1", "creator_id": "star"}
    return DiamondsHoldAnswered(**{**fields, "held": True, "diamonds": 2_000, **changes})


def with_status(status: Any, reason: Any = None) -> Payout:
    return Payout(**{**vars(PAYOUT), "status": status, "reason": reason})


def test_payout_moves_only_a_payout_waiting_for_a_matching_answer() -> None:
    assert payout.answer_hold(PAYOUT, answer()) == with_status("held")
    refused = answer(held=False, reason="insufficient_diamonds")
    assert payout.answer_hold(PAYOUT, refused) == with_status("failed", "insufficient_diamonds")
    assert payout.answer_hold(PAYOUT, answer(diamonds=0)) == with_status("held")  # unsaid
    assert reason_of(payout.answer_hold, None, answer()) == "unknown_state"
    for forged in (answer(payout_id="po-2"), answer(creator_id="x"), answer(diamonds=3_000)):
        assert reason_of(payout.answer_hold, PAYOUT, forged) == "state_mismatch"


def test_payout_ignores_its_answer_again_and_refuses_another() -> None:
    for status, reason in (("held", None), ("completed", None), ("failed", "provider_rejected")):
        assert payout.answer_hold(with_status(status, reason), answer()) is None
    refused = answer(held=False, reason="insufficient_diamonds")
    assert payout.answer_hold(with_status("failed", "insufficient_diamonds"), refused) is None
    assert reason_of(payout.answer_hold, with_status("completed"), refused) == "state_mismatch"
    never_asked = with_status("failed", "not_verified")
    assert reason_of(payout.answer_hold, never_asked, answer()) == "state_mismatch"


ORDER = GiftOrder(
    request_id="gift-1",
    sender_id="fan",
    creator_id="star",
    gift_id="panda",
    quantity=2,
    stream_id="s",
    video_id=None,
    fingerprint="f",
    status="pending",
    coins=10,
)


def debit(**changes: Any) -> GiftDebitAnswered:
    fields = {"request_id": "gift-1", "sender_id": "fan", "creator_id": "star"}
    return GiftDebitAnswered(**{**fields, "debited": True, "coins": 10, **changes})


def test_gifting_settles_only_a_pending_request_with_a_matching_answer() -> None:
    sent = gifting.answer(ORDER, debit())
    assert sent is not None and (sent.status, sent.reason) == ("sent", None)
    rejected = gifting.answer(ORDER, debit(debited=False, reason="insufficient_coins"))
    assert rejected is not None and (rejected.status, rejected.reason) == (
        "rejected",
        "insufficient_coins",
    )
    assert gifting.answer(ORDER, debit(coins=None)) is not None  # an answer that does not say
    assert reason_of(gifting.answer, None, debit()) == "unknown_state"
    for forged in (debit(sender_id="x"), debit(creator_id="x"), debit(coins=11)):
        assert reason_of(gifting.answer, ORDER, forged) == "state_mismatch"


def test_gifting_ignores_its_answer_again_and_refuses_another() -> None:
    sent = gifting.answer(ORDER, debit())
    assert sent is not None
    assert gifting.answer(sent, debit()) is None
    refusal = debit(debited=False, reason="insufficient_coins")
    assert reason_of(gifting.answer, sent, refusal) == "state_mismatch"
    self_gift = ORDER._replace(status="rejected", reason="self_gift", coins=0)
    assert reason_of(gifting.answer, self_gift, debit(coins=None)) == "state_mismatch"
