"""The ledger's rules: balanced transactions of postings between accounts.

Pure: the service loads and locks the balances a batch touches, the `Ledger` applies
transactions to them in memory, and the repository writes the resulting entries.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from services.wallet.errors import InsufficientFundsError, UnbalancedTransactionError
from shared.contracts import PurchaseCompleted

PLATFORM = "platform"


class AccountKind(StrEnum):
    USER_COINS = "user_coins"
    USER_DIAMONDS = "user_diamonds"
    COIN_ISSUANCE = "coin_issuance"
    BONUS_ISSUANCE = "bonus_issuance"


USER_KINDS = frozenset({AccountKind.USER_COINS, AccountKind.USER_DIAMONDS})


@dataclass(frozen=True, order=True)
class AccountRef:
    owner_id: str
    kind: AccountKind

    @property
    def is_user(self) -> bool:
        return self.kind in USER_KINDS


@dataclass(frozen=True)
class Posting:
    account: AccountRef
    amount: int


@dataclass(frozen=True)
class Draft:
    """A transaction not yet applied; its postings sum to zero."""

    kind: str
    idempotency_key: str
    request_id: str
    postings: tuple[Posting, ...]

    def __post_init__(self) -> None:
        if any(posting.amount == 0 for posting in self.postings):
            raise UnbalancedTransactionError(f"{self.idempotency_key}: zero posting")
        if sum(posting.amount for posting in self.postings) != 0:
            raise UnbalancedTransactionError(f"{self.idempotency_key}: postings do not sum to 0")

    @property
    def accounts(self) -> set[AccountRef]:
        return {posting.account for posting in self.postings}


@dataclass(frozen=True)
class Entry:
    account: AccountRef
    amount: int
    balance_after: int


class Ledger:
    """Balances of the accounts a batch holds locked; applies drafts to them in order."""

    def __init__(self, balances: Mapping[AccountRef, int]) -> None:
        self._balances = dict(balances)

    def balance(self, account: AccountRef) -> int:
        return self._balances[account]

    def apply(self, draft: Draft) -> list[Entry]:
        """Apply a draft whole or not at all; user accounts may not end below zero."""
        after = dict(self._balances)
        entries = []
        for posting in draft.postings:
            after[posting.account] += posting.amount
            entries.append(Entry(posting.account, posting.amount, after[posting.account]))
        short = [p.account for p in draft.postings if p.account.is_user and after[p.account] < 0]
        if short:
            raise InsufficientFundsError(f"{draft.idempotency_key}: {short[0]} would go negative")
        self._balances = after
        return entries


def coins(user_id: str) -> AccountRef:
    return AccountRef(user_id, AccountKind.USER_COINS)


COIN_ISSUANCE = AccountRef(PLATFORM, AccountKind.COIN_ISSUANCE)
BONUS_ISSUANCE = AccountRef(PLATFORM, AccountKind.BONUS_ISSUANCE)


def purchase_credit(event: PurchaseCompleted) -> Draft:
    """Coins bought (and promotion bonus) move from platform issuance to the user.

    Purchased and bonus coins are separate postings against separate issuance
    accounts, so the history tells them apart.
    """
    postings = [Posting(coins(event.user_id), event.coins), Posting(COIN_ISSUANCE, -event.coins)]
    if event.bonus_coins:
        postings += [
            Posting(coins(event.user_id), event.bonus_coins),
            Posting(BONUS_ISSUANCE, -event.bonus_coins),
        ]
    return Draft(
        kind="purchase",
        idempotency_key=f"purchase:{event.payment_id}",
        request_id=event.request_id,
        postings=tuple(postings),
    )
