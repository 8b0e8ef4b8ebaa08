"""The chaos checker judges from outside: its balance model, and how it counts a lost,
a doubled or a misfiled outcome, a wrong balance and a stray dead letter."""

import ast
import random
from fractions import Fraction
from pathlib import Path

from chaos.checker import (
    Expected,
    judge_balances,
    judge_dead_letters,
    judge_latency,
    judge_outcomes,
    model,
)
from chaos.faults import KINDS, Fault, plan
from chaos.observe import DeadLetter, Outcome, Request
from shared import topics as t


def request(request_id: str, kind: str, topic: str, at: float = 0.0) -> Request:
    return Request(request_id, kind, topic, "key", b"{}", at, acked=True)


def outcome(topic: str, at: float = 1.0, **body: object) -> Outcome:
    return Outcome(topic, dict(body), at)


def test_the_model_follows_the_contract_s_outcomes_with_exact_diamonds() -> None:
    outcomes = {
        "p1": {"e1": outcome(t.PURCHASE_COMPLETED, user_id="u", coins=700, bonus_coins=70)},
        "g1": {"e2": outcome(t.GIFT_SENT, sender_id="u", creator_id="c", coins=3, diamonds="1.5")},
        "g2": {"e3": outcome(t.GIFT_SENT, sender_id="u", creator_id="c", coins=5, diamonds=2)},
        "cb": {"e4": outcome(t.PURCHASE_REVERSED, user_id="u", coins=770)},
        "po": {"e5": outcome(t.PAYOUT_COMPLETED, creator_id="c", diamonds=2)},
        "pf": {"e6": outcome(t.PAYOUT_FAILED, creator_id="c", reason="below_minimum")},
    }
    assert model(outcomes) == {
        "u": Expected(coins=700 + 70 - 3 - 5 - 770, diamonds=Fraction(0)),
        "c": Expected(coins=0, diamonds=Fraction(3, 2)),
    }


def test_lost_doubled_and_misfiled_outcomes_are_counted() -> None:
    requests = {
        r.request_id: r
        for r in (
            request("fine", "purchase", t.PURCHASE_REQUESTED),
            request("lost", "gift", t.GIFT_REQUESTED),
            request("twice", "payout", t.PAYOUT_REQUESTED),
            request("elsewhere", "gift", t.GIFT_REQUESTED),
        )
    }
    outcomes = {
        "fine": {"a": outcome(t.PURCHASE_FAILED), "a2": outcome(t.PURCHASE_FAILED)},
        "twice": {"b": outcome(t.PAYOUT_FAILED), "c": outcome(t.PAYOUT_COMPLETED)},
        "elsewhere": {"d": outcome(t.PURCHASE_COMPLETED)},
    }
    outcomes["fine"].pop("a2")  # the same event read twice is one event: one key

    verdict = judge_outcomes(requests, outcomes)

    assert (verdict.answered, verdict.lost, verdict.doubled) == (3, ["lost"], ["twice"])
    assert verdict.misfiled == [f"elsewhere on {t.PURCHASE_COMPLETED}"]
    assert len(verdict.violations()) == 4  # lost, doubled, misfiled, no audit run yet


def test_balances_holds_and_freezes_are_compared_with_the_model() -> None:
    verdict = judge_outcomes({}, {})
    expected = {"ok": Expected(5, Fraction(1, 2)), "neg": Expected(-3), "held": Expected()}
    judge_balances(
        verdict,
        expected,
        {
            "ok": {"coins": 5, "diamonds": "0.5", "diamonds_on_hold": 0, "frozen": False},
            "neg": {"coins": -3, "diamonds": 0, "diamonds_on_hold": 0, "frozen": False},
            "held": {"coins": 0, "diamonds": 0, "diamonds_on_hold": "2000", "frozen": False},
        },
    )
    assert [line.split(":")[0] for line in verdict.wrong_balances] == ["held", "neg"]


def test_dead_letters_must_be_exactly_the_malformed_messages() -> None:
    verdict = judge_outcomes({}, {})
    sent = [b"x1-bad1 {not json", b'{"note": "x1-bad2"}']
    found = [
        DeadLetter("payment.purchase-requested.dlq", sent[0], ()),
        DeadLetter("payment.purchase-requested.dlq", sent[0], ()),
        DeadLetter("gifting.gift-requested.dlq", b'{"request_id": "x1-g3"}', ()),
    ]
    judge_dead_letters(verdict, sent, found)
    assert (verdict.dlt_found, verdict.dlt_copies) == (2, 1)
    assert len(verdict.dlt_unexpected) == 1 and len(verdict.dlt_missing) == 1


def test_recovery_is_when_latency_is_back_under_the_threshold() -> None:
    # 100 ms before the fault at t=10; requests sent in 10..14 wait until 15; fast again.
    sent = [n * 0.5 for n in range(60)]
    requests = {
        f"r{n}": request(f"r{n}", "purchase", t.PURCHASE_REQUESTED, at) for n, at in enumerate(sent)
    }
    outcomes = {
        f"r{n}": {
            "e": outcome(
                t.PURCHASE_COMPLETED, at=max(at + 0.1, 15.0) if 10 <= at < 15 else at + 0.1
            )
        }
        for n, at in enumerate(sent)
    }
    fault = Fault(1, "broker-kill", "kafka", 10.0, 14.0)
    verdict = judge_outcomes(requests, outcomes)
    judge_latency(
        verdict, requests, outcomes, [fault], baseline=(0.0, 10.0), final=(20.0, 30.0), factor=3
    )
    assert verdict.baseline_p50_s is not None and abs(verdict.baseline_p50_s - 0.1) < 1e-9
    assert verdict.recoveries[0].first_answer_s == 5.0
    back = verdict.recoveries[0].baseline_s
    assert back is not None and 4.0 <= back <= 5.0


def test_the_plan_is_seeded_and_its_first_rounds_cover_every_kind() -> None:
    first = plan(random.Random(3), 12)
    assert first == plan(random.Random(3), 12)
    assert sorted(first[: len(KINDS)]) == sorted(KINDS)


def test_the_checker_imports_nothing_of_the_services() -> None:
    for source in (Path(__file__).parents[2] / "chaos").glob("*.py"):
        tree = ast.parse(source.read_text())
        imported = [
            name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for name in (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
            )
        ]
        assert not [name for name in imported if name.startswith("services")], source
