"""Gift rules: checks before any coin moves, exact conversion, fingerprints."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from services.gifting import domain
from services.gifting.domain import Gift, GiftRules
from services.gifting.settings import GiftingSettings
from shared.contracts import GiftRequested

RULES = GiftRules(creator_share=Decimal("0.5"), max_quantity=100)
ROSE = Gift("rose", "Rose", 1)


def request(**changes: Any) -> GiftRequested:
    fields: dict[str, Any] = {
        "request_id": "g-1",
        "sender_id": "ada",
        "creator_id": "grace",
        "gift_id": "rose",
        "quantity": 1,
        "stream_id": "live-1",
        "occurred_at": datetime(2026, 11, 22, tzinfo=UTC),
    }
    return GiftRequested(**(fields | changes))


@pytest.mark.parametrize(
    ("changes", "gift", "reason"),
    [
        ({"stream_id": None}, ROSE, "invalid_request"),
        ({"video_id": "v-1"}, ROSE, "invalid_request"),
        ({"creator_id": "ada"}, ROSE, "self_gift"),
        ({}, None, "unknown_gift"),
        ({}, Gift("rose", "Rose", 1, active=False), "unknown_gift"),
        ({"quantity": 0}, ROSE, "invalid_quantity"),
        ({"quantity": 101}, ROSE, "invalid_quantity"),
        ({"quantity": 10**30}, ROSE, "invalid_quantity"),
        ({"quantity": 100}, ROSE, None),
        ({"stream_id": None, "video_id": "v-1"}, ROSE, None),
    ],
)
def test_a_request_is_checked_before_any_coin_moves(
    changes: dict[str, Any], gift: Gift | None, reason: str | None
) -> None:
    order = domain.decide(request(**changes), gift, RULES)
    assert order.reason == reason
    assert order.status == ("rejected" if reason else "pending")
    if reason:
        assert (order.coins, order.diamonds) == (0, Decimal(0))


@pytest.mark.parametrize(
    ("coins", "share", "diamonds"),
    [
        (1, "0.5", "0.5"),
        (2, "0.5", "1"),
        (3, "0.5", "1.5"),
        (44_999, "0.5", "22499.5"),
        (1, "0.3333", "0.3333"),
        (7, "0", "0"),
        (7, "1", "7"),
    ],
)
def test_diamonds_are_the_exact_share_of_the_coins(coins: int, share: str, diamonds: str) -> None:
    assert domain.creator_diamonds(coins, Decimal(share)) == Decimal(diamonds)


def test_a_valid_request_is_priced_from_the_catalog() -> None:
    order = domain.decide(request(gift_id="lion", quantity=3), Gift("lion", "Lion", 29_999), RULES)
    assert (order.status, order.coins, order.diamonds) == ("pending", 89_997, Decimal("44998.5"))


def test_the_fingerprint_ignores_the_time_but_not_the_content() -> None:
    first = request()
    assert domain.fingerprint(first) == domain.fingerprint(
        request(occurred_at=datetime(2026, 11, 23, tzinfo=UTC))
    )
    assert domain.fingerprint(first) != domain.fingerprint(request(quantity=2))
    assert domain.fingerprint(first) != domain.fingerprint(
        request(stream_id=None, video_id="live-1")
    )


@pytest.mark.parametrize("share", ["-0.1", "1.01", "0.33333"])
def test_a_creator_share_that_cannot_convert_exactly_is_refused(share: str) -> None:
    with pytest.raises(ValidationError):
        GiftingSettings(creator_share=Decimal(share))
