import pytest

from services.wallet import domain
from services.wallet.domain import COIN_ISSUANCE, Draft, Ledger, Posting
from services.wallet.errors import InsufficientFundsError, UnbalancedTransactionError
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


def test_a_draft_must_balance() -> None:
    with pytest.raises(UnbalancedTransactionError):
        Draft("t", "k", "r", (Posting(domain.coins("u1"), 5), Posting(COIN_ISSUANCE, -4)))
    with pytest.raises(UnbalancedTransactionError):
        Draft("t", "k", "r", (Posting(domain.coins("u1"), 0), Posting(COIN_ISSUANCE, 0)))


def test_purchase_credit_separates_bought_and_bonus_coins() -> None:
    draft = domain.purchase_credit(purchase(70, bonus=7))
    ledger = Ledger({domain.coins("u1"): 0, COIN_ISSUANCE: 0, domain.BONUS_ISSUANCE: 0})
    entries = ledger.apply(draft)
    assert [(e.account.kind, e.amount) for e in entries] == [
        ("user_coins", 70),
        ("coin_issuance", -70),
        ("user_coins", 7),
        ("bonus_issuance", -7),
    ]
    assert ledger.balance(domain.coins("u1")) == 77
    assert draft.idempotency_key == "purchase:pay1"


def test_a_user_account_never_goes_negative_and_a_refused_draft_changes_nothing() -> None:
    user = domain.coins("u1")
    ledger = Ledger({user: 10, COIN_ISSUANCE: -10})
    spend = Draft("spend", "k", "r", (Posting(user, -11), Posting(COIN_ISSUANCE, 11)))
    with pytest.raises(InsufficientFundsError):
        ledger.apply(spend)
    assert ledger.balance(user) == 10
    assert ledger.balance(COIN_ISSUANCE) == -10
