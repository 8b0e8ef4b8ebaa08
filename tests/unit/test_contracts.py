from decimal import Decimal

import pytest
from pydantic import ValidationError

from shared.contracts import GiftSent, PurchaseCompleted, PurchaseRequested
from shared.money import Money, format_diamonds

REQUEST = (
    b'{"request_id":"r1","user_id":"u1","package_id":"coins_70",'
    b'"price":{"amount_minor":99,"currency":"USD"},"payment_method":"pm_card_ok",'
    b'"occurred_at":"2026-11-22T10:00:00+01:00","unknown_field":true}'
)


def test_a_request_parses_ignoring_unknown_fields() -> None:
    request = PurchaseRequested.model_validate_json(REQUEST)
    assert request.price == Money(amount_minor=99, currency="USD")
    assert request.key() == "u1"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"amount_minor":99', b'"amount_minor":"99"'),  # a string is not an integer
        (b'"amount_minor":99', b'"amount_minor":0.99'),  # money is never a float
        (b'"currency":"USD"', b'"currency":"usd"'),
        (b'"2026-11-22T10:00:00+01:00"', b'"2026-11-22T10:00:00"'),  # offset required
        (b'"request_id":"r1"', b'"request_id":""'),
        (b'"request_id":"r1"', b'"request_id":"' + b"x" * 65 + b'"'),
    ],
)
def test_wrong_types_and_shapes_are_refused(old: bytes, new: bytes) -> None:
    with pytest.raises(ValidationError):
        PurchaseRequested.model_validate_json(REQUEST.replace(old, new))


def test_events_carry_id_time_and_request() -> None:
    event = PurchaseCompleted(
        request_id="r1",
        payment_id="p1",
        user_id="u1",
        package_id="coins_70",
        coins=70,
        bonus_coins=0,
        price=Money(amount_minor=99, currency="USD"),
    )
    again = PurchaseCompleted.model_validate_json(event.model_dump_json())
    assert again == event
    assert event.event_id and event.occurred_at.tzinfo is not None


@pytest.mark.parametrize(
    ("diamonds", "wire"), [(Decimal("0.5"), "0.5"), (Decimal("1.0"), 1), (Decimal(3), 3)]
)
def test_diamonds_are_an_integer_or_a_decimal_string(diamonds: Decimal, wire: int | str) -> None:
    assert format_diamonds(diamonds) == wire
    event = GiftSent(
        request_id="r",
        sender_id="s",
        creator_id="c",
        gift_id="rose",
        quantity=1,
        coins=1,
        diamonds=diamonds,
        stream_id="live",
    )
    assert GiftSent.model_validate_json(event.model_dump_json()).diamonds == diamonds


@pytest.mark.parametrize("bad", ["0.5e1", "-1", "abc", "1.", True])
def test_diamonds_refuse_floats_and_junk(bad: object) -> None:
    payload = {
        "request_id": "r",
        "sender_id": "s",
        "creator_id": "c",
        "gift_id": "rose",
        "quantity": 1,
        "coins": 1,
        "diamonds": bad,
    }
    with pytest.raises(ValidationError):
        GiftSent.model_validate(payload)
    payload["diamonds"] = 0.5
    with pytest.raises(ValidationError):
        GiftSent.model_validate(payload)
