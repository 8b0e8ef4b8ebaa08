from datetime import UTC, datetime

import pytest

from services.payment.domain import Offer, decide
from shared.contracts import PurchaseRequested
from shared.money import Money

OFFER = Offer("coins_70", coins=70, bonus_coins=5, price=Money(amount_minor=99, currency="USD"))


def request(amount: int = 99, currency: str = "USD") -> PurchaseRequested:
    return PurchaseRequested(
        request_id="r1",
        user_id="u1",
        package_id="coins_70",
        price=Money(amount_minor=amount, currency=currency),
        payment_method="pm_card_ok",
        occurred_at=datetime.now(UTC),
    )


def test_a_matching_request_is_pending_its_charge_with_coins_and_bonus() -> None:
    purchase = decide(request(), OFFER)
    assert (purchase.status, purchase.coins, purchase.bonus_coins) == ("pending", 70, 5)


@pytest.mark.parametrize(
    ("req", "offer", "reason"),
    [
        (request(), None, "unknown_package"),
        (request(amount=98), OFFER, "price_mismatch"),
        (request(currency="EUR"), OFFER, "price_mismatch"),
        (request(amount=-99), OFFER, "invalid_request"),
    ],
)
def test_refusals_name_their_reason(
    req: PurchaseRequested, offer: Offer | None, reason: str
) -> None:
    purchase = decide(req, offer)
    assert (purchase.status, purchase.reason, purchase.coins) == ("failed", reason, 0)
