import pytest

from services.wallet import domain
from services.wallet.domain import (
    BONUS_ISSUANCE,
    COIN_ISSUANCE,
    COIN_REVENUE,
    DIAMOND_ISSUANCE,
    AccountState,
    Draft,
    Ledger,
    Posting,
    TxKind,
)
from services.wallet.errors import (
    InsufficientFundsError,
    InvalidPurchaseError,
    UnbalancedTransactionError,
    WalletError,
)
from shared.contracts import PurchaseCompleted
from shared.money import Money


def purchase(coins: int, bonus: int = 0) -> PurchaseCompleted:
    return PurchaseCompleted(
        request_id="r1",
        payment_id="pay1",
        user_id="u1",
        package_id="coins_70",
        coins=coins,
        bonus_coins=bonus,
        price=Money(amount_minor=99, currency="USD"),
    )


def ledger(**balances: int) -> Ledger:
    refs = {
        "user": domain.coins("u1"),
        "issued": COIN_ISSUANCE,
        "bonus": BONUS_ISSUANCE,
        "revenue": COIN_REVENUE,
    }
    return Ledger({refs[name]: AccountState(balances.get(name, 0)) for name in refs})


def spend(amount: int) -> Draft:
    return Draft(
        TxKind.PURCHASE, "spend", "r", domain.transfer(domain.coins("u1"), COIN_REVENUE, amount)
    )


def test_a_draft_must_balance() -> None:
    with pytest.raises(UnbalancedTransactionError):
        Draft(
            TxKind.PURCHASE, "k", "r", (Posting(domain.coins("u1"), 5), Posting(COIN_ISSUANCE, -4))
        )
    with pytest.raises(UnbalancedTransactionError):
        Draft(
            TxKind.PURCHASE, "k", "r", (Posting(domain.coins("u1"), 0), Posting(COIN_ISSUANCE, 0))
        )
    with pytest.raises(UnbalancedTransactionError):
        Draft(TxKind.PURCHASE, "k", "r", ())


def test_a_draft_balances_coins_and_diamonds_separately() -> None:
    with pytest.raises(UnbalancedTransactionError, match="coins"):
        Draft(
            TxKind.PURCHASE,
            "k",
            "r",
            (Posting(domain.coins("u1"), -5), Posting(domain.diamonds("u2"), 5)),
        )
    Draft(
        TxKind.PURCHASE,
        "k",
        "r",
        (
            *domain.transfer(domain.coins("u1"), COIN_REVENUE, 5),
            *domain.transfer(DIAMOND_ISSUANCE, domain.diamonds("u2"), 2),
        ),
    )


def test_purchase_credit_separates_bought_and_bonus_coins() -> None:
    draft = domain.purchase_credit(purchase(70, bonus=7))
    book = ledger()
    entries = book.apply(draft)
    assert [(e.account.kind, e.amount, e.counter) for e in entries] == [
        ("user_coins", 70, COIN_ISSUANCE),
        ("coin_issuance", -70, domain.coins("u1")),
        ("user_coins", 7, BONUS_ISSUANCE),
        ("bonus_issuance", -7, domain.coins("u1")),
    ]
    assert [e.balance_after for e in entries] == [70, -70, 77, -7]
    assert book.balance(domain.coins("u1")) == 77
    assert draft.idempotency_key == "purchase:pay1"


@pytest.mark.parametrize(("coins", "bonus"), [(0, 0), (-70, 0), (70, -1), (0, 7)])
def test_a_nonsensical_purchase_is_a_wallet_error(coins: int, bonus: int) -> None:
    with pytest.raises(InvalidPurchaseError) as refused:
        domain.purchase_credit(purchase(coins, bonus))
    assert isinstance(refused.value, WalletError)  # hence dead-lettered, alone


def test_a_user_account_never_goes_negative_and_a_refused_draft_changes_nothing() -> None:
    book = ledger(user=10, issued=-10)
    with pytest.raises(InsufficientFundsError):
        book.apply(spend(11))
    assert book.balance(domain.coins("u1")) == 10
    assert book.balance(COIN_REVENUE) == 0


def test_every_entry_is_checked_not_only_the_net_of_the_draft() -> None:
    # Net zero for the user, but the first entry goes to -5: the database would refuse it.
    user = domain.coins("u1")
    there_and_back = Draft(
        TxKind.PURCHASE,
        "k",
        "r",
        domain.transfer(user, COIN_REVENUE, 15) + domain.transfer(COIN_REVENUE, user, 15),
    )
    with pytest.raises(InsufficientFundsError):
        ledger(user=10, issued=-10).apply(there_and_back)


def test_a_clawback_mirrors_the_credit_even_below_zero_and_freezes_the_account() -> None:
    credit = domain.purchase_credit(purchase(70, bonus=7))
    book = ledger()
    book.apply(credit)
    book.apply(spend(50))
    clawback = domain.clawback(payment_id="pay1", request_id="cb1", credit=credit.postings)
    entries = book.apply(clawback)
    assert clawback.idempotency_key == "clawback:pay1"
    assert clawback.kind is TxKind.CLAWBACK
    assert [(e.account.kind, e.amount, e.counter) for e in entries] == [
        ("user_coins", -70, COIN_ISSUANCE),
        ("coin_issuance", 70, domain.coins("u1")),
        ("user_coins", -7, BONUS_ISSUANCE),
        ("bonus_issuance", 7, domain.coins("u1")),
    ]
    assert book.state(domain.coins("u1")) == AccountState(-50, frozen=True)
    assert book.balance(COIN_ISSUANCE) == 0 and book.balance(BONUS_ISSUANCE) == 0


def test_a_credit_that_brings_a_frozen_account_back_to_zero_unfreezes_it() -> None:
    book = Ledger(
        {domain.coins("u1"): AccountState(-70, frozen=True), COIN_ISSUANCE: AccountState(0)}
    )
    book.apply(
        Draft(TxKind.PURCHASE, "p2", "r", domain.transfer(COIN_ISSUANCE, domain.coins("u1"), 35))
    )
    assert book.state(domain.coins("u1")) == AccountState(-35, frozen=True)
    book.apply(
        Draft(TxKind.PURCHASE, "p3", "r", domain.transfer(COIN_ISSUANCE, domain.coins("u1"), 35))
    )
    assert book.state(domain.coins("u1")) == AccountState(0, frozen=False)


def test_only_user_coins_may_be_clawed_back_below_zero() -> None:
    diamonds = domain.diamonds("u1")
    book = Ledger({diamonds: AccountState(3), DIAMOND_ISSUANCE: AccountState(-3)})
    with pytest.raises(InsufficientFundsError):
        book.apply(Draft(TxKind.CLAWBACK, "k", "r", domain.transfer(diamonds, DIAMOND_ISSUANCE, 5)))
