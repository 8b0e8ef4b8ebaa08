"""The verdict, timeline and rendering of `coinstream trace` (shared/journey.py), from
journeys built by hand; tests/integration/test_trace_cli.py reads real ones."""

import json
from datetime import UTC, datetime, timedelta

from rich.console import Console

from shared import topics
from shared.journey import Consumed, Journey, Letter, OutboxEvent, Record, names_request, render

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def purchase(state: str, reason: str | None = None) -> Record:
    fields = {"user_id": "u1", "coins": 70} | ({"reason": reason} if reason else {})
    return Record(
        "payment",
        "purchases",
        state,
        {"requested_at": at(0), "created_at": at(0.1), "charged_at": None, "updated_at": at(0.3)},
        fields,
    )


def event(service: str, topic: str, created: float, published: float | None) -> OutboxEvent:
    return OutboxEvent(
        service, topic, f"e-{topic}", at(created), None if published is None else at(published)
    )


def ledger(created: float) -> Record:
    return Record(
        "wallet", "ledger_transactions", "posted", {"created_at": at(created)}, {"kind": "x"}
    )


def test_nothing_found_is_an_unknown_request_id() -> None:
    assert Journey("r", at(0)).verdict() == "unknown request_id"
    assert not Journey("r", at(0)).found
    unread = Journey("r", at(0), warnings=["dead letters not read: timed out"])
    assert unread.verdict() == "unknown request_id (not everything was read)"


def test_a_purchase_credited_by_the_wallet_is_completed() -> None:
    journey = Journey(
        "r",
        at(5),
        records=[purchase("completed"), ledger(0.5)],
        events=[
            event("payment", topics.PURCHASE_COMPLETED, 0.3, 0.35),
            event("wallet", topics.COINS_CREDITED, 0.5, 0.55),
        ],
    )
    assert journey.verdict() == "completed"


def test_a_completed_purchase_the_wallet_has_not_credited_is_pending_in_the_wallet() -> None:
    journey = Journey(
        "r",
        at(12.35),
        records=[purchase("completed")],
        events=[event("payment", topics.PURCHASE_COMPLETED, 0.3, 0.35)],
    )
    assert journey.verdict() == "pending in wallet since 12 s"


def test_a_failure_names_its_reason() -> None:
    journey = Journey("r", at(1), records=[purchase("failed", "payment_declined")])
    assert journey.verdict() == "failed: payment_declined"
    gift = Record(
        "gifting",
        "gift_requests",
        "rejected",
        {"created_at": at(0), "decided_at": at(0.2)},
        {"reason": "insufficient_coins"},
    )
    assert Journey("g", at(1), records=[gift]).verdict() == "failed: insufficient_coins"


def test_a_pending_gift_waits_for_the_wallet_until_it_answers_then_for_gifting() -> None:
    gift = Record("gifting", "gift_requests", "pending", {"created_at": at(0)}, {})
    asked = event("gifting", topics.GIFT_DEBIT_REQUESTED, 0.0, 0.1)
    waiting = Journey("g", at(90.1), records=[gift], events=[asked])
    assert waiting.verdict() == "pending in wallet since 90 s"
    answered = event("wallet", topics.GIFT_DEBIT_ANSWERED, 0.2, 0.3)
    later = Journey("g", at(600.3), records=[gift, ledger(0.2)], events=[asked, answered])
    assert later.verdict() == "pending in gifting since 10 min"


def test_an_event_still_in_the_outbox_is_pending_there() -> None:
    journey = Journey(
        "r",
        at(3),
        records=[purchase("completed"), ledger(0.5)],
        events=[
            event("payment", topics.PURCHASE_COMPLETED, 0.3, 0.35),
            event("wallet", topics.COINS_CREDITED, 0.5, None),
        ],
    )
    assert journey.verdict() == "pending in wallet (outbox) since 2 s"


def test_only_a_dead_letter_says_dead_lettered_with_its_reason() -> None:
    letter = Letter(
        "gifting.gift-requested.dlq:2:7", topics.GIFT_REQUESTED, "bad_message", "gifting", at(0), ""
    )
    journey = Journey("g", at(1), letters=[letter])
    assert journey.found
    assert journey.verdict() == "dead-lettered: bad_message"
    done = Journey("g", at(1), records=[purchase("completed"), ledger(0.5)], letters=[letter])
    assert done.verdict() == "completed (1 dead letter(s) name it too)"


def test_the_timeline_is_ordered_by_time_and_the_json_is_plain() -> None:
    journey = Journey(
        "r",
        at(5),
        records=[purchase("completed"), ledger(0.5)],
        events=[
            event("wallet", topics.COINS_CREDITED, 0.5, 0.55),
            event("payment", topics.PURCHASE_COMPLETED, 0.3, 0.35),
        ],
        consumed=[Consumed("wallet", topics.PURCHASE_COMPLETED, "e", at(0.45))],
    )
    steps = journey.timeline()
    assert [s.at for s in steps] == sorted(s.at for s in steps if s.at)
    assert [(s.service, s.what, s.state) for s in steps][:3] == [
        ("payment", "purchase", "received"),
        ("payment", "purchase", "completed"),
        ("payment", topics.PURCHASE_COMPLETED, "published"),
    ]
    body = json.loads(json.dumps(journey.as_json()))
    assert body["verdict"] == "completed"
    assert body["timeline"][0]["at"] == at(0.1).isoformat()


def test_render_prints_the_timeline_and_the_verdict() -> None:
    journey = Journey(
        "req-1",
        at(5),
        records=[purchase("completed"), ledger(0.5)],
        events=[event("payment", topics.PURCHASE_COMPLETED, 0.3, 0.35)],
    )
    console = Console(record=True, width=200, highlight=False)
    render(journey, console)
    text = console.export_text()
    assert "request req-1" in text
    assert topics.PURCHASE_COMPLETED in text
    assert "+200 ms" in text  # the decision, after the first step
    assert text.rstrip().endswith("verdict: completed")


def test_a_body_names_a_request_by_its_request_id_field_even_when_cut_short() -> None:
    body = json.dumps({"request_id": "gift-1", "quantity": "2"}).encode()
    assert names_request(body, "gift-1")
    assert not names_request(body, "gift-10")
    assert names_request(body[:30], "gift-1")  # not JSON any more
    assert not names_request(body[:30], "gift-")
    assert not names_request(json.dumps({"note": '"request_id":"gift-1"'}).encode(), "gift-1")
    assert not names_request(b"\xff\xfe", "gift-1")
