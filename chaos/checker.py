"""The checker: judges a run from outside, from what was sent and what the topics,
the wallet's HTTP API and the ledger audit say. It imports nothing of the services:
its model of every balance is computed from the outcome events alone (CONTRACT.md):

    coins(user)       = Σ purchase-completed (coins + bonus_coins) - Σ gift-sent coins
                        - Σ purchase-reversed coins
    diamonds(creator) = Σ gift-sent diamonds - Σ payout-completed diamonds
    on hold           = 0 once every payout has its outcome;  frozen ⇔ coins < 0
"""

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from chaos.faults import Fault
from chaos.observe import OUTCOME_TOPICS, DeadLetter, Outcome, Request
from shared import topics as t


@dataclass(frozen=True)
class Expected:
    coins: int = 0
    diamonds: Fraction = Fraction(0)


@dataclass
class Recovery:
    fault: Fault
    first_answer_s: float | None  # fault start → first outcome of a request sent after it
    baseline_s: float | None  # fault start → latency back under the threshold


@dataclass
class Verdict:
    requests: Counter[str] = field(default_factory=Counter)
    duplicates_sent: int = 0
    malformed_sent: int = 0
    unsent: int = 0
    answered: int = 0
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    misfiled: list[str] = field(default_factory=list)
    accounts: int = 0
    wrong_balances: list[str] = field(default_factory=list)
    audit_code: int | None = None
    audit_report: str = ""
    dlt_expected: int = 0
    dlt_found: int = 0
    dlt_unexpected: list[str] = field(default_factory=list)
    dlt_missing: list[str] = field(default_factory=list)
    dlt_copies: int = 0
    baseline_p50_s: float | None = None
    final_p50_s: float | None = None
    threshold_s: float | None = None
    recoveries: list[Recovery] = field(default_factory=list)
    died_unasked: list[str] = field(default_factory=list)
    outcomes_by_topic: Counter[str] = field(default_factory=Counter)

    def violations(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} requests lost (no outcome)")
        if self.doubled:
            found.append(f"{len(self.doubled)} requests with more than one outcome")
        if self.misfiled:
            found.append(f"{len(self.misfiled)} outcomes on a topic their request cannot have")
        if self.wrong_balances:
            found.append(f"{len(self.wrong_balances)} balances differ from the model")
        if self.audit_code != 0:
            found.append(f"ledger audit exited {self.audit_code}")
        if self.dlt_unexpected:
            found.append(f"{len(self.dlt_unexpected)} dead letters that were not sent malformed")
        if self.dlt_missing:
            found.append(f"{len(self.dlt_missing)} malformed messages missing from the DLTs")
        if (
            self.final_p50_s is not None
            and self.threshold_s is not None
            and self.final_p50_s > self.threshold_s
        ):
            found.append(
                f"latency after the last fault (p50 {self.final_p50_s * 1000:.0f} ms) above "
                f"{self.threshold_s * 1000:.0f} ms"
            )
        if self.died_unasked:
            found.append(f"processes died without a fault: {', '.join(self.died_unasked)}")
        return found


def diamonds_of(value: Any) -> Fraction:
    """Diamonds as the contract writes them: an integer or a decimal string."""
    return Fraction(str(value))


def judge_outcomes(
    requests: dict[str, Request], outcomes: dict[str, dict[str, Outcome]]
) -> Verdict:
    """Exactly one outcome per request, on one of its request's outcome topics."""
    verdict = Verdict()
    for request in requests.values():
        verdict.requests[request.kind] += 1
        events = outcomes.get(request.request_id, {})
        if not events:
            if request.acked:
                verdict.lost.append(request.request_id)
            else:
                verdict.unsent += 1
            continue
        verdict.answered += 1
        if len(events) > 1:
            verdict.doubled.append(request.request_id)
        for outcome in events.values():
            verdict.outcomes_by_topic[outcome.topic] += 1
            if outcome.topic not in OUTCOME_TOPICS[request.topic]:
                verdict.misfiled.append(f"{request.request_id} on {outcome.topic}")
    return verdict


def model(outcomes: dict[str, dict[str, Outcome]]) -> dict[str, Expected]:
    """Every account's balance as the outcomes say it must be (one event per id)."""
    coins: dict[str, int] = defaultdict(int)
    diamonds: dict[str, Fraction] = defaultdict(Fraction)
    for events in outcomes.values():
        for outcome in events.values():
            body = outcome.body
            match outcome.topic:
                case t.PURCHASE_COMPLETED:
                    coins[body["user_id"]] += body["coins"] + body["bonus_coins"]
                case t.PURCHASE_REVERSED:
                    coins[body["user_id"]] -= body["coins"]
                case t.GIFT_SENT:
                    coins[body["sender_id"]] -= body["coins"]
                    diamonds[body["creator_id"]] += diamonds_of(body["diamonds"])
                case t.PAYOUT_COMPLETED:
                    diamonds[body["creator_id"]] -= diamonds_of(body["diamonds"])
    return {
        account: Expected(coins.get(account, 0), diamonds.get(account, Fraction(0)))
        for account in {*coins, *diamonds}
    }


def judge_balances(
    verdict: Verdict, expected: dict[str, Expected], actual: dict[str, dict[str, Any]]
) -> None:
    verdict.accounts = len(actual)
    for account, body in sorted(actual.items()):
        want = expected.get(account, Expected())
        got_diamonds = diamonds_of(body["diamonds"])
        problems = []
        if body["coins"] != want.coins:
            problems.append(f"coins {body['coins']} ≠ {want.coins}")
        if got_diamonds != want.diamonds:
            problems.append(f"diamonds {body['diamonds']} ≠ {want.diamonds}")
        if diamonds_of(body["diamonds_on_hold"]) != 0:
            problems.append(f"{body['diamonds_on_hold']} diamonds still on hold")
        if bool(body["frozen"]) != (want.coins < 0):
            problems.append(f"frozen={body['frozen']} with {want.coins} coins")
        if problems:
            verdict.wrong_balances.append(f"{account}: {'; '.join(problems)}")


def judge_dead_letters(verdict: Verdict, sent: list[bytes], found: list[DeadLetter]) -> None:
    """The dead-letter topics hold the malformed messages sent, and nothing else of ours."""
    expected = set(sent)
    values = [letter.value for letter in found]
    verdict.malformed_sent = len(sent)
    verdict.dlt_expected = len(expected)
    verdict.dlt_found = len(set(values))
    verdict.dlt_copies = len(values) - len(set(values))
    verdict.dlt_unexpected = [
        f"{letter.topic}: {letter.value[:80]!r}" for letter in found if letter.value not in expected
    ]
    verdict.dlt_missing = [repr(value[:80]) for value in expected - set(values)]


def latency(request: Request, outcomes: dict[str, dict[str, Outcome]]) -> float | None:
    events = outcomes.get(request.request_id)
    if not events:
        return None
    return max(0.0, min(o.at for o in events.values()) - request.created_at)


def judge_latency(
    verdict: Verdict,
    requests: dict[str, Request],
    outcomes: dict[str, dict[str, Outcome]],
    faults: list[Fault],
    *,
    baseline: tuple[float, float],
    final: tuple[float, float],
    factor: float,
) -> None:
    """Baseline p50 over requests sent in `baseline` (before the first fault); p50 over
    `final` (after the last) must be within `factor` times baseline (plus 250 ms of
    scheduling noise on this small machine). Per fault: how long until a request sent
    after it was answered at all, and until five in a row had a median under that."""
    timed = sorted(
        (r.created_at, lat) for r in requests.values() if (lat := latency(r, outcomes)) is not None
    )

    def p50(start: float, end: float) -> float | None:
        window = [lat for at, lat in timed if start <= at < end]
        return statistics.median(window) if window else None

    verdict.baseline_p50_s = p50(*baseline)
    verdict.final_p50_s = p50(*final)
    if verdict.baseline_p50_s is None:
        return
    threshold = max(verdict.baseline_p50_s * factor, verdict.baseline_p50_s + 0.25)
    verdict.threshold_s = threshold
    ends = [f.started for f in faults[1:]] + [final[1]]
    for fault, end in zip(faults, ends, strict=True):
        after = [(at, lat) for at, lat in timed if fault.started <= at < end]
        first = min((at + lat for at, lat in after), default=None)
        back = None
        for n in range(len(after) - 4):
            window = after[n : n + 5]
            if statistics.median(lat for _, lat in window) <= threshold:
                back = window[0][0] - fault.started
                break
        verdict.recoveries.append(
            Recovery(fault, None if first is None else first - fault.started, back)
        )
