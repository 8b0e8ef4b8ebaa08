"""Property-based tests of the ledger rules: whatever valid drafts arrive, in whatever
order, the books balance, balances are their entries, nothing goes below zero except
user coins through a clawback, and a refused draft changes nothing."""

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from services.wallet import domain
from services.wallet.domain import (
    AccountKind,
    AccountRef,
    AccountState,
    Draft,
    Entry,
    Ledger,
    Posting,
    TxKind,
    Unit,
)
from services.wallet.errors import InsufficientFundsError, UnbalancedTransactionError
from shared.contracts import PurchaseCompleted
from shared.money import Money

USERS = ("ann", "ben", "cat")
ACCOUNTS = [
    *(domain.coins(user) for user in USERS),
    *(domain.diamonds(user) for user in USERS),
    *(domain.hold_of(user) for user in USERS),
    domain.COIN_ISSUANCE,
    domain.BONUS_ISSUANCE,
    domain.COIN_REVENUE,
    domain.DIAMOND_ISSUANCE,
    domain.PAYOUT_CLEARING,
]
BY_UNIT = {unit: [ref for ref in ACCOUNTS if ref.kind.unit is unit] for unit in Unit}

amounts = st.integers(min_value=1, max_value=500)


@st.composite
def transfers(draw: st.DrawFn) -> tuple[Posting, ...]:
    """One to three transfers, each between two accounts of one unit: a valid draft."""
    postings: tuple[Posting, ...] = ()
    for _ in range(draw(st.integers(1, 3))):
        unit = draw(st.sampled_from(list(Unit)))
        source, target = draw(
            st.lists(st.sampled_from(BY_UNIT[unit]), min_size=2, max_size=2, unique=True)
        )
        postings += domain.transfer(source, target, draw(amounts))
    return postings


def dips_below_zero(draft: Draft, states: dict[AccountRef, AccountState]) -> bool:
    """The rule, restated independently of the Ledger: some posting lowers an account
    below zero that may not go there for this kind of transaction."""
    running = {ref: state.balance for ref, state in states.items()}
    for posting in draft.postings:
        running[posting.account] += posting.amount
        allowed = posting.account.kind.negative_allowed or (
            draft.kind is TxKind.CLAWBACK and posting.account.kind is AccountKind.USER_COINS
        )
        if posting.amount < 0 and running[posting.account] < 0 and not allowed:
            return True
    return False


class LedgerRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger({ref: AccountState(0) for ref in ACCOUNTS})
        self.entries: dict[AccountRef, list[tuple[Entry, TxKind]]] = defaultdict(list)
        self.credits: list[Draft] = []  # purchases not clawed back yet
        self.payments = 0

    def states(self) -> dict[AccountRef, AccountState]:
        return {ref: self.ledger.state(ref) for ref in ACCOUNTS}

    def post(self, draft: Draft) -> bool:
        before = self.states()
        try:
            entries = self.ledger.apply(draft)
        except InsufficientFundsError:
            assert dips_below_zero(draft, before)
            assert self.states() == before  # a refused draft changes nothing
            return False
        assert not dips_below_zero(draft, before)
        for unit in Unit:
            assert sum(e.amount for e in entries if e.account.kind.unit is unit) == 0
        for entry in entries:
            self.entries[entry.account].append((entry, draft.kind))
        return True

    @rule(user=st.sampled_from(USERS), coins=amounts, bonus=st.integers(0, 50))
    def purchase(self, user: str, coins: int, bonus: int) -> None:
        self.payments += 1
        event = PurchaseCompleted(
            request_id="r",
            payment_id=f"pay{self.payments}",
            user_id=user,
            package_id="p",
            coins=coins,
            bonus_coins=bonus,
            price=Money(amount_minor=99, currency="USD"),
        )
        credit = domain.purchase_credit(event)
        assert self.post(credit)  # a credit is never refused
        self.credits.append(credit)

    @rule(user=st.sampled_from(USERS), coins=amounts)
    def spend(self, user: str, coins: int) -> None:
        self.post(
            Draft(
                TxKind.GIFT,
                "g",
                "r",
                domain.transfer(domain.coins(user), domain.COIN_REVENUE, coins),
            )
        )

    @precondition(lambda self: self.credits)
    @rule(pick=st.integers(min_value=0))
    def claw_back(self, pick: int) -> None:
        credit = self.credits.pop(pick % len(self.credits))
        payment_id = credit.idempotency_key.removeprefix("purchase:")
        clawback = domain.clawback(payment_id=payment_id, request_id="cb", credit=credit.postings)
        assert self.post(clawback)  # taken back whatever the balance

    @rule(kind=st.sampled_from(list(TxKind)), postings=transfers())
    def anything_balanced(self, kind: TxKind, postings: tuple[Posting, ...]) -> None:
        self.post(Draft(kind, "any", "r", postings))

    @invariant()
    def every_unit_sums_to_zero(self) -> None:
        for unit in Unit:
            assert sum(self.ledger.balance(ref) for ref in BY_UNIT[unit]) == 0

    @invariant()
    def balances_are_their_entries(self) -> None:
        for ref in ACCOUNTS:
            mine = [entry for entry, _ in self.entries[ref]]
            assert self.ledger.balance(ref) == sum(e.amount for e in mine)
            running = 0
            for entry in mine:
                running += entry.amount
                assert entry.balance_after == running

    @invariant()
    def below_zero_only_user_coins_by_clawback_and_then_frozen(self) -> None:
        for ref in ACCOUNTS:
            state = self.ledger.state(ref)
            if not ref.kind.negative_allowed:
                assert state.balance >= 0 or ref.kind is AccountKind.USER_COINS
            assert state.frozen == (ref.kind is AccountKind.USER_COINS and state.balance < 0)
            for entry, kind in self.entries[ref]:
                if entry.amount < 0 and entry.balance_after < 0 and not ref.kind.negative_allowed:
                    assert kind is TxKind.CLAWBACK and ref.kind is AccountKind.USER_COINS


TestLedgerRules = LedgerRules.TestCase
TestLedgerRules.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


@given(
    postings=st.lists(
        st.tuples(st.sampled_from(ACCOUNTS), st.integers(-1000, 1000).filter(bool)),
        min_size=1,
        max_size=6,
    )
)
def test_a_draft_exists_only_if_each_unit_sums_to_zero(
    postings: list[tuple[AccountRef, int]],
) -> None:
    balanced = all(sum(a for ref, a in postings if ref.kind.unit is unit) == 0 for unit in Unit)
    try:
        Draft(TxKind.GIFT, "k", "r", tuple(Posting(ref, amount) for ref, amount in postings))
    except UnbalancedTransactionError:
        assert not balanced
    else:
        assert balanced
