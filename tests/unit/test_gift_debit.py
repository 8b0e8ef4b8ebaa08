"""The wallet's side of a gift: one balanced transaction, refusals in their order."""

from decimal import Decimal

import pytest

from services.wallet import domain
from services.wallet.domain import (
    COIN_REVENUE,
    DIAMOND_ISSUANCE,
    PLATFORM_COMMISSION,
    AccountState,
    Ledger,
    SpendingLimits,
    Spent,
)
from services.wallet.errors import InvalidGiftDebitError
from shared.contracts import GiftDebitRequested


def debit(
    coins: int, diamonds: str, sender: str = "ada", creator: str = "grace"
) -> GiftDebitRequested:
    return GiftDebitRequested(
        request_id="g-1",
        sender_id=sender,
        creator_id=creator,
        coins=coins,
        diamonds=Decimal(diamonds),
    )


def test_a_gift_splits_the_coins_value_between_creator_and_platform() -> None:
    draft = domain.gift_debit(debit(3, "1.5"))
    book = Ledger(
        {
            ref: AccountState(0)
            for ref in (
                domain.coins("ada"),
                domain.diamonds("grace"),
                COIN_REVENUE,
                DIAMOND_ISSUANCE,
                PLATFORM_COMMISSION,
            )
        }
        | {domain.coins("ada"): AccountState(10)}
    )
    book.apply(draft)

    assert book.balance(domain.coins("ada")) == 7
    assert book.balance(COIN_REVENUE) == 3
    assert book.balance(domain.diamonds("grace")) == 15_000  # 1.5 diamonds
    assert book.balance(PLATFORM_COMMISSION) == 15_000
    assert book.balance(DIAMOND_ISSUANCE) == -30_000
    assert draft.idempotency_key == "gift:g-1"


def test_a_zero_share_gives_the_platform_everything_and_the_creator_no_entry() -> None:
    draft = domain.gift_debit(debit(5, "0"))
    assert domain.diamonds("grace") not in draft.accounts
    assert sum(p.amount for p in draft.postings if p.account == PLATFORM_COMMISSION) == 50_000


@pytest.mark.parametrize(
    "bad",
    [
        debit(0, "0"),
        debit(-1, "0"),
        debit(1, "1.5"),  # more diamonds than the coins are worth
        debit(1, "0.00001"),  # finer than a diamond unit
        debit(1, "0.5", sender="ada", creator="ada"),
    ],
)
def test_a_nonsensical_debit_is_refused(bad: GiftDebitRequested) -> None:
    with pytest.raises(InvalidGiftDebitError):
        domain.gift_debit(bad)


def test_units_and_diamonds_convert_exactly() -> None:
    assert domain.diamond_units(Decimal("0.5")) == 5_000
    assert domain.diamond_units(Decimal("0.0001")) == 1
    assert domain.diamonds_of(5_000) == Decimal("0.5")
    assert domain.diamonds_of(123_456_789) == Decimal("12345.6789")


@pytest.mark.parametrize(
    ("state", "limits", "spent", "coins", "reason"),
    [
        (AccountState(-5, frozen=True), SpendingLimits(day=0), Spent(), 1, "account_frozen"),
        (AccountState(100), SpendingLimits(day=10), Spent(day=5), 6, "spending_limit_exceeded"),
        (
            AccountState(100),
            SpendingLimits(month=10),
            Spent(month=10),
            1,
            "spending_limit_exceeded",
        ),
        (AccountState(100), SpendingLimits(day=10), Spent(day=5), 5, None),
        (AccountState(3), SpendingLimits(day=10), Spent(), 5, "insufficient_coins"),
        (AccountState(5), SpendingLimits(), Spent(), 5, None),
    ],
)
def test_refusals_come_in_order_frozen_limit_balance(
    state: AccountState, limits: SpendingLimits, spent: Spent, coins: int, reason: str | None
) -> None:
    assert domain.gift_refusal(state, coins, limits, spent) == reason


def test_spending_adds_to_every_period() -> None:
    assert Spent(1, 2, 3).plus(5) == Spent(6, 7, 8)
