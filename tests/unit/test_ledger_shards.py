"""The platform's accounts in shards: which shard a message books into, and drafts that
book the platform's side there."""

from decimal import Decimal

import pytest

from services.wallet import domain
from services.wallet.domain import AccountKind, AccountRef, AccountState, Ledger, platform
from shared.contracts import GiftDebitRequested, PurchaseCompleted
from shared.money import Money

# Kafka's own test vectors for the murmur2 of its default partitioner
# (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2), as
# signed 32-bit ints. A Java producer puts key k in partition toPositive(murmur2(k)) % n.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize(("key", "murmur2"), JAVA_MURMUR2.items())
@pytest.mark.parametrize("partitions", [1, 6, 7, 12, 64])
def test_the_shard_of_a_key_is_the_partition_of_kafkas_default_partitioner(
    key: str, murmur2: int, partitions: int
) -> None:
    assert domain.shard_of(key, partitions) == (murmur2 & 0x7FFFFFFF) % partitions


def test_keys_spread_over_every_shard() -> None:
    shards = {domain.shard_of(f"user-{n}", 6) for n in range(200)}
    assert shards == set(range(6))


def test_shard_zero_is_the_platform_accounts_of_before_sharding() -> None:
    issuance, revenue = AccountKind.COIN_ISSUANCE, AccountKind.COIN_REVENUE
    assert platform(issuance, 0) == AccountRef("platform", issuance) == domain.COIN_ISSUANCE
    assert platform(revenue, 5) == AccountRef("platform/5", revenue)
    with pytest.raises(ValueError):
        platform(AccountKind.USER_COINS, 1)
    with pytest.raises(ValueError):
        platform(AccountKind.COIN_ISSUANCE, -1)


def purchase(user: str = "ada", coins: int = 70, bonus: int = 7) -> PurchaseCompleted:
    return PurchaseCompleted(
        request_id="r1",
        payment_id="pay1",
        user_id=user,
        package_id="coins_70",
        coins=coins,
        bonus_coins=bonus,
        price=Money(amount_minor=99, currency="USD"),
    )


def platform_accounts(draft: domain.Draft) -> set[AccountRef]:
    return {ref for ref in draft.accounts if not ref.is_user}


def test_a_purchase_credit_books_issuance_in_its_shard() -> None:
    draft = domain.purchase_credit(purchase(), shard=4)
    assert platform_accounts(draft) == {
        platform(AccountKind.COIN_ISSUANCE, 4),
        platform(AccountKind.BONUS_ISSUANCE, 4),
    }
    counters = {p.counter for p in draft.postings if p.account.is_user}
    assert counters == platform_accounts(draft)  # history still tells purchased from bonus


def test_a_clawback_returns_the_coins_to_the_issuance_of_its_own_shard() -> None:
    credit = domain.purchase_credit(purchase(), shard=4)
    clawback = domain.clawback(payment_id="pay1", request_id="cb", credit=credit.postings, shard=1)
    assert platform_accounts(clawback) == {
        platform(AccountKind.COIN_ISSUANCE, 1),
        platform(AccountKind.BONUS_ISSUANCE, 1),
    }
    # Per kind the clawback undoes the credit, whichever shards they booked in.
    book = Ledger({ref: AccountState(0) for ref in credit.accounts | clawback.accounts})
    book.apply(credit)
    book.apply(clawback)
    assert book.balance(domain.coins("ada")) == 0
    for kind in (AccountKind.COIN_ISSUANCE, AccountKind.BONUS_ISSUANCE):
        assert sum(book.balance(platform(kind, shard)) for shard in (1, 4)) == 0
    user_side = [p for p in clawback.postings if p.account.is_user]
    sources = [domain.coin_source(p.counter.kind) for p in user_side if p.counter]
    assert sources == ["purchased", "bonus"]


def test_a_gift_books_revenue_issuance_and_commission_in_its_shard() -> None:
    request = GiftDebitRequested(
        request_id="g1", sender_id="ada", creator_id="grace", coins=3, diamonds=Decimal("1.5")
    )
    draft = domain.gift_debit(request, shard=2)
    assert platform_accounts(draft) == {
        platform(AccountKind.COIN_REVENUE, 2),
        platform(AccountKind.DIAMOND_ISSUANCE, 2),
        platform(AccountKind.PLATFORM_COMMISSION, 2),
    }


def test_a_posted_hold_leaves_for_the_payout_clearing_of_its_shard() -> None:
    post = domain.close_hold(request_id="p1", creator_id="grace", units=10, paid=True, shard=3)
    void = domain.close_hold(request_id="p1", creator_id="grace", units=10, paid=False, shard=3)
    assert platform_accounts(post) == {platform(AccountKind.PAYOUT_CLEARING, 3)}
    assert platform_accounts(void) == set()  # a void moves the creator's own diamonds only
