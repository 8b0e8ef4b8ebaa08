"""The wallet's rules: balanced ledger transactions between accounts, spending limits.

Pure: the service loads and locks the balances a batch touches, the `Ledger` applies
transactions to them in memory, and the repository writes the resulting entries. The
database enforces the same rules again on the entries (migration 0002).

The platform's accounts are split in shards (`platform`, `shard_of`): a transaction takes
the platform's side in the shard of the Kafka partition its message came from, so
replicas, which own disjoint partitions, lock disjoint platform rows. The drafts below
take that shard as `shard` (0 when a caller has no message, as in tests).
"""

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Literal, NamedTuple

from services.wallet.errors import (
    HoldMismatchError,
    InsufficientFundsError,
    InvalidGiftDebitError,
    InvalidHoldError,
    InvalidPurchaseError,
    InvalidReversalError,
    InvalidSpendingLimitError,
    ReversalMismatchError,
    UnbalancedTransactionError,
    UnknownHoldError,
)
from shared.contracts import (
    DiamondsHoldRequested,
    GiftDebitRefusal,
    GiftDebitRequested,
    PayoutCompleted,
    PayoutFailed,
    Period,
    PurchaseCompleted,
    PurchaseReversed,
    SpendingLimitRequested,
)
from shared.topics import partition_of

PLATFORM = "platform"

DIAMOND_UNITS = 10_000
"""Diamond accounts count in units of 1/10,000 diamond. A creator share with at most
four decimals (50%, 33.33%) of a whole number of coins is then a whole number of units:
the ledger keeps every fraction exactly (one Rose at 50% is 5,000 units = 0.5 diamond)."""


def diamond_units(diamonds: Decimal) -> int:
    """Diamonds as ledger units; refuses an amount finer than the unit (never rounds)."""
    units = diamonds * DIAMOND_UNITS
    if units != units.to_integral_value():
        raise InvalidGiftDebitError(f"{diamonds} diamonds is finer than 1/{DIAMOND_UNITS}")
    return int(units)


def diamonds_of(units: int) -> Decimal:
    """Ledger units as diamonds, exactly."""
    return Decimal(units).scaleb(-4)


class Unit(StrEnum):
    COINS = "coins"
    DIAMONDS = "diamonds"


class AccountKind(StrEnum):
    """Mirrors the `account_kinds` table of migration 0002 (a test compares them)."""

    USER_COINS = "user_coins"
    USER_DIAMONDS = "user_diamonds"
    USER_DIAMOND_HOLD = "user_diamond_hold"  # diamonds reserved by a pending payout
    COIN_ISSUANCE = "coin_issuance"  # the other side of every purchased coin
    BONUS_ISSUANCE = "bonus_issuance"  # the other side of every bonus coin
    COIN_REVENUE = "coin_revenue"  # coins spent on gifts
    DIAMOND_ISSUANCE = "diamond_issuance"  # the other side of every diamond credited
    PLATFORM_COMMISSION = "platform_commission"  # the platform's share of gifts, in diamonds
    PAYOUT_CLEARING = "payout_clearing"  # diamonds paid out

    @property
    def unit(self) -> Unit:
        return Unit.COINS if self in _COIN_KINDS else Unit.DIAMONDS

    @property
    def user_owned(self) -> bool:
        return self.value.startswith("user_")

    @property
    def negative_allowed(self) -> bool:
        """Issuance accounts are the negative side of everything that exists."""
        return self in _ISSUANCE_KINDS


_COIN_KINDS = frozenset(
    {
        AccountKind.USER_COINS,
        AccountKind.COIN_ISSUANCE,
        AccountKind.BONUS_ISSUANCE,
        AccountKind.COIN_REVENUE,
    }
)
_ISSUANCE_KINDS = frozenset(
    {AccountKind.COIN_ISSUANCE, AccountKind.BONUS_ISSUANCE, AccountKind.DIAMOND_ISSUANCE}
)
_UNIT_OF = {kind: kind.unit for kind in AccountKind}


class TxKind(StrEnum):
    PURCHASE = "purchase"
    CLAWBACK = "clawback"  # the only kind that may take user coins below zero
    GIFT = "gift"  # coins spent on a gift, converted to the creator's diamonds
    HOLD = "hold"  # diamonds reserved for a payout: they stop being available
    HOLD_POST = "hold_post"  # the payout was paid: the reserved diamonds leave
    HOLD_VOID = "hold_void"  # the payout failed: the reserved diamonds are available again


# The ledger's value objects are NamedTuples: a batch builds, hashes and compares them
# per posting, and a tuple's constructor, hash and equality run in C (a frozen
# dataclass's run in Python). Immutable and ordered field by field all the same.


class AccountRef(NamedTuple):
    owner_id: str
    kind: AccountKind

    @property
    def is_user(self) -> bool:
        return self.kind.user_owned


class Posting(NamedTuple):
    account: AccountRef
    amount: int
    counter: AccountRef | None = None  # the other side, so history can tell coins apart


def transfer(source: AccountRef, target: AccountRef, amount: int) -> tuple[Posting, Posting]:
    """`amount` moves from `source` to `target`: two postings naming each other."""
    return Posting(target, amount, counter=source), Posting(source, -amount, counter=target)


@dataclass(frozen=True, slots=True)
class Draft:
    """A transaction not yet applied; its postings sum to zero in each unit."""

    kind: TxKind
    idempotency_key: str
    request_id: str
    postings: tuple[Posting, ...]

    def __post_init__(self) -> None:
        if not self.postings:
            raise UnbalancedTransactionError(f"{self.idempotency_key}: empty or zero posting")
        coins = diamonds = 0  # one pass; the unit of each kind is looked up, not derived
        for posting in self.postings:
            if posting.amount == 0:
                raise UnbalancedTransactionError(f"{self.idempotency_key}: empty or zero posting")
            if _UNIT_OF[posting.account.kind] is Unit.COINS:
                coins += posting.amount
            else:
                diamonds += posting.amount
        for unit, total in ((Unit.COINS, coins), (Unit.DIAMONDS, diamonds)):
            if total != 0:
                raise UnbalancedTransactionError(
                    f"{self.idempotency_key}: {unit} postings do not sum to 0"
                )

    @property
    def accounts(self) -> set[AccountRef]:
        return {posting.account for posting in self.postings}


class Entry(NamedTuple):
    account: AccountRef
    amount: int
    balance_after: int
    counter: AccountRef | None = None


class AccountState(NamedTuple):
    balance: int
    frozen: bool = False


def may_go_below_zero(account: AccountRef, kind: TxKind) -> bool:
    """Only issuance accounts, and user coins taken back by a chargeback's clawback."""
    if account.kind.negative_allowed:
        return True
    return kind is TxKind.CLAWBACK and account.kind is AccountKind.USER_COINS


class Ledger:
    """States of the accounts a batch holds locked; applies drafts to them in order."""

    def __init__(self, states: Mapping[AccountRef, AccountState]) -> None:
        self._states = dict(states)

    def state(self, account: AccountRef) -> AccountState:
        return self._states[account]

    def balance(self, account: AccountRef) -> int:
        return self._states[account].balance

    def apply(self, draft: Draft) -> list[Entry]:
        """Apply a draft whole or not at all.

        Entry by entry, as the database checks them: a posting that lowers an account
        below zero is refused unless `may_go_below_zero` allows it.
        """
        running: dict[AccountRef, int] = {}
        entries = []
        for posting in draft.postings:
            balance = running.get(posting.account, self.balance(posting.account)) + posting.amount
            lowered_below_zero = posting.amount < 0 and balance < 0
            if lowered_below_zero and not may_go_below_zero(posting.account, draft.kind):
                raise InsufficientFundsError(
                    f"{draft.idempotency_key}: {posting.account} would go below zero"
                )
            running[posting.account] = balance
            entries.append(Entry(posting.account, posting.amount, balance, posting.counter))
        for account, balance in running.items():
            self._states[account] = AccountState(balance, frozen_at(account, balance))
        return entries


def frozen_at(account: AccountRef, balance: int) -> bool:
    """User coins below zero (only a clawback gets there) are frozen for spending until
    a credit brings them back to zero or more."""
    return account.kind is AccountKind.USER_COINS and balance < 0


def coins(user_id: str) -> AccountRef:
    return AccountRef(user_id, AccountKind.USER_COINS)


def diamonds(user_id: str) -> AccountRef:
    return AccountRef(user_id, AccountKind.USER_DIAMONDS)


def hold_of(user_id: str) -> AccountRef:
    """A user's diamonds on hold (reserved by payouts in flight)."""
    return AccountRef(user_id, AccountKind.USER_DIAMOND_HOLD)


def platform(kind: AccountKind, shard: int) -> AccountRef:
    """The platform's `kind` account in `shard`: owner `platform/<shard>`, and plain
    `platform` for shard 0.

    No row is locked by every transaction: each takes the platform's side in its own
    shard. A shard's balance means nothing alone; the platform's balance of a kind is the
    sum of its shards (the audit and reconciliation sum by kind).
    """
    if kind.user_owned or shard < 0:
        raise ValueError(f"no platform account {kind} in shard {shard}")
    # Shard 0 keeps the owner the platform's accounts had before they were sharded
    # (migration 0009): a replica of the previous version, running while a new one rolls
    # out, books into shard 0 rather than into accounts of its own.
    return AccountRef(PLATFORM if shard == 0 else f"{PLATFORM}/{shard}", kind)


def shard_of(key: str, shards: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed `key` in a topic of
    `shards` partitions: murmur2 of the UTF-8 key, made positive, modulo the count (the
    Java client's `Utils.toPositive(Utils.murmur2(key)) % n`, which aiokafka copies).

    A wallet transaction locks the platform shard of its message's partition. Replicas
    own disjoint partitions, so their batches, however large, lock disjoint platform
    rows. The shard is only where the platform's side is booked: a wrong count (or a
    producer with another partitioner) costs concurrency, never correctness.
    """
    return partition_of(key.encode(), shards)


def on_shard(account: AccountRef, shard: int) -> AccountRef:
    """`account`, or, for a platform account, the same kind in `shard`."""
    return account if account.is_user else platform(account.kind, shard)


# Shard 0: the platform's accounts from before they were sharded (migration 0009).
COIN_ISSUANCE = platform(AccountKind.COIN_ISSUANCE, 0)
BONUS_ISSUANCE = platform(AccountKind.BONUS_ISSUANCE, 0)
COIN_REVENUE = platform(AccountKind.COIN_REVENUE, 0)
DIAMOND_ISSUANCE = platform(AccountKind.DIAMOND_ISSUANCE, 0)
PLATFORM_COMMISSION = platform(AccountKind.PLATFORM_COMMISSION, 0)
PAYOUT_CLEARING = platform(AccountKind.PAYOUT_CLEARING, 0)


def purchase_key(payment_id: str) -> str:
    return f"purchase:{payment_id}"


def clawback_key(payment_id: str) -> str:
    return f"clawback:{payment_id}"


def purchase_credit(event: PurchaseCompleted, *, shard: int = 0) -> Draft:
    """Coins bought (and promotion bonus) move from platform issuance to the user.

    Purchased and bonus coins are separate transfers from separate issuance accounts,
    so the history tells them apart. An event that parses but makes no sense is
    refused whole (and dead-lettered), never partly credited.
    """
    if event.coins <= 0 or event.bonus_coins < 0:
        raise InvalidPurchaseError(
            f"payment {event.payment_id}: coins={event.coins}, bonus_coins={event.bonus_coins}"
        )
    user = coins(event.user_id)
    issuance = platform(AccountKind.COIN_ISSUANCE, shard)
    postings: tuple[Posting, ...] = transfer(issuance, user, event.coins)
    if event.bonus_coins:
        bonus = platform(AccountKind.BONUS_ISSUANCE, shard)
        postings += transfer(bonus, user, event.bonus_coins)
    return Draft(
        kind=TxKind.PURCHASE,
        idempotency_key=purchase_key(event.payment_id),
        request_id=event.request_id,
        postings=postings,
    )


def check_reversal(event: PurchaseReversed) -> None:
    """Refuse a reversal that makes no sense; what it takes back comes from the credit."""
    if event.coins <= 0:
        raise InvalidReversalError(f"payment {event.payment_id}: coins={event.coins}")


def check_reversal_of(event: PurchaseReversed, credit: Iterable[Posting]) -> None:
    """Refuse a reversal that names a credited payment but another user or another
    amount (purchased + bonus coins) than the wallet credited."""
    credited = [p for p in credit if p.account.kind is AccountKind.USER_COINS]
    owners = {p.account.owner_id for p in credited}
    amount = sum(p.amount for p in credited)
    if owners != {event.user_id} or amount != event.coins:
        raise ReversalMismatchError(
            f"reversal of {event.payment_id} says {event.user_id}, {event.coins} coins; "
            f"the credit was {', '.join(sorted(owners))}, {amount} coins"
        )


def clawback(
    *, payment_id: str, request_id: str, credit: Iterable[Posting], shard: int = 0
) -> Draft:
    """The mirror of a purchase credit: each coin goes back where it came from
    (purchased to coin issuance, bonus to bonus issuance), whatever the balance.

    The issuance side is booked in `shard` (the reversal's), which may not be the
    credit's: only the sum of the shards means anything.
    """

    def mirrored(p: Posting) -> Posting:
        counter = on_shard(p.counter, shard) if p.counter else None
        return Posting(on_shard(p.account, shard), -p.amount, counter=counter)

    return Draft(
        kind=TxKind.CLAWBACK,
        idempotency_key=clawback_key(payment_id),
        request_id=request_id,
        postings=tuple(mirrored(p) for p in credit),
    )


def gift_key(request_id: str) -> str:
    return f"gift:{request_id}"


def gift_debit(request: GiftDebitRequested, *, shard: int = 0) -> Draft:
    """A gift as one transaction: the sender's coins go to coin revenue, and their value
    (one diamond per coin, in units) is issued as diamonds, split between the creator
    (the share gifting asked for) and the platform's commission.

    So, to the unit: coins spent x 10,000 = creator units + commission units.
    """
    if request.coins <= 0 or request.sender_id == request.creator_id:
        raise InvalidGiftDebitError(
            f"gift {request.request_id}: {request.coins} coins from {request.sender_id} "
            f"to {request.creator_id}"
        )
    creator_units = diamond_units(request.diamonds)
    value_units = request.coins * DIAMOND_UNITS
    if not 0 <= creator_units <= value_units:
        raise InvalidGiftDebitError(
            f"gift {request.request_id}: {request.diamonds} diamonds for {request.coins} coins"
        )
    revenue = platform(AccountKind.COIN_REVENUE, shard)
    issuance = platform(AccountKind.DIAMOND_ISSUANCE, shard)
    commission = platform(AccountKind.PLATFORM_COMMISSION, shard)
    postings: tuple[Posting, ...] = transfer(coins(request.sender_id), revenue, request.coins)
    if creator_units:
        postings += transfer(issuance, diamonds(request.creator_id), creator_units)
    if value_units > creator_units:
        postings += transfer(issuance, commission, value_units - creator_units)
    return Draft(
        kind=TxKind.GIFT,
        idempotency_key=gift_key(request.request_id),
        request_id=request.request_id,
        postings=postings,
    )


def gift_refusal(
    sender: AccountState, coins: int, limits: "SpendingLimits", spent: "Spent"
) -> GiftDebitRefusal | None:
    """Why a sender may not spend `coins` now, or None. A frozen account (a chargeback
    left it negative) is refused first, then the user's own limit, then the balance."""
    if sender.frozen:
        return "account_frozen"
    if exceeded_limit(limits, spent, coins) is not None:
        return "spending_limit_exceeded"
    if sender.balance < coins:
        return "insufficient_coins"
    return None


def hold_key(request_id: str) -> str:
    return f"hold:{request_id}"


def diamond_hold(request: DiamondsHoldRequested) -> Draft:
    """The first phase of a payout: whole diamonds move from the creator's available
    diamonds to their hold account, where they count as on hold, not available."""
    if request.diamonds <= 0:
        raise InvalidHoldError(f"payout {request.request_id}: {request.diamonds} diamonds")
    units = request.diamonds * DIAMOND_UNITS
    return Draft(
        kind=TxKind.HOLD,
        idempotency_key=hold_key(request.request_id),
        request_id=request.request_id,
        postings=transfer(diamonds(request.creator_id), hold_of(request.creator_id), units),
    )


HoldStatus = Literal["open", "posted", "voided"]


@dataclass(frozen=True)
class Hold:
    """Diamonds reserved for one payout (keyed by its request_id) and its phase."""

    request_id: str
    payout_id: str
    creator_id: str
    units: int
    deadline: datetime
    status: HoldStatus = "open"


def settle_hold(hold: Hold | None, outcome: PayoutCompleted | PayoutFailed) -> Hold | None:
    """The hold as a payout's outcome closes it (posted when paid, voided when failed),
    or None when there is nothing to do: a redelivery, or a payout refused before any
    hold was placed.

    The outcome must match the hold the wallet placed: the same payout_id, creator and
    diamonds, and not closed the other way already. Anything else is refused, never
    applied: a forged payout-failed would release diamonds the bank paid out (a double
    cash-out), a forged payout-completed would pay out diamonds never sent.
    """
    paid = isinstance(outcome, PayoutCompleted)
    if hold is None:
        if isinstance(outcome, PayoutCompleted) or outcome.reason == "provider_rejected":
            # Paid, or rejected by the bank: only ever after a hold.
            raise UnknownHoldError(f"payout {outcome.request_id}: the wallet holds nothing")
        return None
    if (outcome.payout_id, outcome.creator_id) != (hold.payout_id, hold.creator_id) or (
        outcome.diamonds * DIAMOND_UNITS != hold.units
    ):
        raise HoldMismatchError(
            f"payout {outcome.request_id} says {outcome.payout_id}, {outcome.creator_id}, "
            f"{outcome.diamonds} diamonds; the hold is {hold.payout_id}, {hold.creator_id}, "
            f"{diamonds_of(hold.units)} diamonds"
        )
    closed: HoldStatus = "posted" if paid else "voided"
    if hold.status == "open":
        return replace(hold, status=closed)
    if hold.status == closed:
        return None  # closed by this outcome before: a redelivery
    raise HoldMismatchError(
        f"payout {outcome.request_id} says {closed}; its hold is {hold.status} already"
    )


def close_hold(
    *, request_id: str, creator_id: str, units: int, paid: bool, shard: int = 0
) -> Draft:
    """The second phase: post the hold (the diamonds leave for payout clearing, in
    `shard`) when the payout was paid, void it (the diamonds are available again) when it
    failed."""
    target = platform(AccountKind.PAYOUT_CLEARING, shard) if paid else diamonds(creator_id)
    kind = TxKind.HOLD_POST if paid else TxKind.HOLD_VOID
    return Draft(
        kind=kind,
        idempotency_key=f"{kind}:{request_id}",
        request_id=request_id,
        postings=transfer(hold_of(creator_id), target, units),
    )


_COIN_SOURCES = {AccountKind.COIN_ISSUANCE: "purchased", AccountKind.BONUS_ISSUANCE: "bonus"}


def coin_source(counter: AccountKind | None) -> str | None:
    """How a user's coins entered or left: against coin issuance they are purchased
    coins, against bonus issuance bonus coins; None for anything else."""
    return _COIN_SOURCES.get(counter) if counter else None


def user_coins_of(draft: Draft) -> AccountRef:
    """The user whose coins a purchase credit or a clawback moves."""
    return next(p.account for p in draft.postings if p.account.kind is AccountKind.USER_COINS)


def user_total(entries: Iterable[Entry], account: AccountRef) -> tuple[int, int]:
    """(sum of the amounts, balance after the last entry) of one account in a transaction."""
    mine = [entry for entry in entries if entry.account == account]
    return sum(entry.amount for entry in mine), mine[-1].balance_after


# --- spending limits -------------------------------------------------------------------

PERIODS: tuple[Period, ...] = ("day", "week", "month")

MAX_LIMIT_COINS = 2**63 - 1
"""The largest limit a user may set (a bigint, like every coin count)."""


def check_limit_request(request: SpendingLimitRequested) -> None:
    """Refuse a limit beyond any coin count (the schema already refuses a negative one)."""
    if request.max_coins is not None and request.max_coins > MAX_LIMIT_COINS:
        raise InvalidSpendingLimitError(
            f"spending limit {request.request_id!r}: max_coins {request.max_coins} is out of range"
        )


def limit_fingerprint(request: SpendingLimitRequested) -> str:
    """What makes a repeated request_id the same request (its time may differ)."""
    content = f"{request.user_id}|{request.period}|{request.max_coins}"
    return hashlib.sha256(content.encode()).hexdigest()


@dataclass(frozen=True)
class SpendingLimits:
    """A user's own coin limits per period; None: no limit."""

    day: int | None = None
    week: int | None = None
    month: int | None = None

    def of(self, period: Period) -> int | None:
        limit: int | None = getattr(self, period)
        return limit


@dataclass(frozen=True)
class Spent:
    """Coins a user spent in the current UTC day, ISO week and calendar month."""

    day: int = 0
    week: int = 0
    month: int = 0

    def of(self, period: Period) -> int:
        spent: int = getattr(self, period)
        return spent

    def plus(self, coins: int) -> "Spent":
        return replace(self, day=self.day + coins, week=self.week + coins, month=self.month + coins)


def period_start(period: Period, now: datetime) -> datetime:
    """When the UTC calendar period holding `now` began: the day at 00:00, the ISO week
    on its Monday, the month on its 1st. What was spent since then counts."""
    if now.tzinfo is None:
        raise ValueError("a naive datetime has no defined UTC period")
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def exceeded_limit(limits: SpendingLimits, spent: Spent, coins: int) -> Period | None:
    """The first period whose limit a debit of `coins` would exceed; None: allowed.

    A limit is the most a user may spend in the period, so reaching it exactly is
    allowed and one coin more is not.
    """
    for period in PERIODS:
        limit = limits.of(period)
        if limit is not None and spent.of(period) + coins > limit:
            return period
    return None
