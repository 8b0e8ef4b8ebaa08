"""The public messages of CONTRACT.md as pydantic models.

Requests come from upstream apps; events are what a service publishes. Every model
names the field that is its Kafka key, so one account's messages stay in order.
Parsing is strict: a wrong type is a bad message (dead-lettered), never coerced.
"""

import os
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared import topics
from shared.money import Diamonds, Money

Id = Annotated[str, Field(min_length=1, max_length=64)]
Period = Literal["day", "week", "month"]

PurchaseFailureReason = Literal[
    "unknown_package",
    "price_mismatch",
    "payment_declined",
    "limit_exceeded",
    "provider_unavailable",
    "invalid_request",
]
GiftRejectionReason = Literal[
    "unknown_gift",
    "invalid_quantity",
    "self_gift",
    "insufficient_coins",
    "spending_limit_exceeded",
    "account_frozen",
    "invalid_request",
]
PayoutFailureReason = Literal[
    "not_verified",
    "below_minimum",
    "daily_limit_exceeded",
    "insufficient_diamonds",
    "provider_rejected",
    "invalid_request",
]


def new_event_id() -> str:
    """A unique id for an event a service publishes: 128 random bits as 32 hex digits.

    The contract asks for a unique opaque id, not a UUID; this is the format uuid4().hex
    had (without its six fixed version bits) at a fraction of the CPU, which counts
    once per published event.
    """
    return os.urandom(16).hex()


def utc_now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every public message: unknown fields ignored, types strict, immutable."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    topic: ClassVar[str]
    key_field: ClassVar[str]

    def key(self) -> str:
        """The Kafka key: the id of the account this message concerns."""
        return str(getattr(self, self.key_field))


class Event(Message):
    """What a service publishes: it carries its own id, time and the request behind it."""

    event_id: Id = Field(default_factory=new_event_id)
    occurred_at: AwareDatetime = Field(default_factory=utc_now)
    request_id: Id


# --- payment ---------------------------------------------------------------------------


class PurchaseRequested(Message):
    topic = topics.PURCHASE_REQUESTED
    key_field = "user_id"

    request_id: Id
    user_id: Id
    package_id: Id
    price: Money
    payment_method: Id
    occurred_at: AwareDatetime


class PurchaseCompleted(Event):
    topic = topics.PURCHASE_COMPLETED
    key_field = "user_id"

    payment_id: Id
    user_id: Id
    package_id: Id
    coins: int
    bonus_coins: int
    price: Money


class PurchaseFailed(Event):
    topic = topics.PURCHASE_FAILED
    key_field = "user_id"

    user_id: Id
    reason: PurchaseFailureReason


class ChargebackReceived(Message):
    topic = topics.CHARGEBACK_RECEIVED
    key_field = "user_id"

    chargeback_id: Id
    payment_id: Id
    user_id: Id
    occurred_at: AwareDatetime


class PurchaseReversed(Event):
    topic = topics.PURCHASE_REVERSED
    key_field = "user_id"

    payment_id: Id
    user_id: Id
    coins: int


# --- wallet ----------------------------------------------------------------------------


class SpendingLimitRequested(Message):
    topic = topics.SPENDING_LIMIT_REQUESTED
    key_field = "user_id"

    request_id: Id
    user_id: Id
    period: Period
    max_coins: Annotated[int, Field(ge=0)] | None
    occurred_at: AwareDatetime


class SpendingLimitUpdated(Event):
    topic = topics.SPENDING_LIMIT_UPDATED
    key_field = "user_id"

    user_id: Id
    period: Period
    max_coins: int | None


class CoinsCredited(Event):
    topic = topics.COINS_CREDITED
    key_field = "user_id"

    user_id: Id
    amount: int
    balance_after: int
    payment_id: Id | None = None
    coins: int = 0
    bonus_coins: int = 0


class CoinsDebited(Event):
    topic = topics.COINS_DEBITED
    key_field = "user_id"

    user_id: Id
    amount: int
    balance_after: int


class DiamondsCredited(Event):
    topic = topics.DIAMONDS_CREDITED
    key_field = "user_id"

    user_id: Id
    amount: Diamonds
    balance_after: Diamonds


class CoinsClawedBack(Event):
    topic = topics.COINS_CLAWED_BACK
    key_field = "user_id"

    user_id: Id
    amount: int
    balance_after: int
    payment_id: Id


# --- gifting ---------------------------------------------------------------------------


class GiftRequested(Message):
    topic = topics.GIFT_REQUESTED
    key_field = "sender_id"

    request_id: Id
    sender_id: Id
    creator_id: Id
    gift_id: Id
    # Range and the stream/video rule are business refusals (`invalid_quantity`,
    # `invalid_request`), not parse errors, so they are checked by the service.
    quantity: int
    stream_id: Id | None = None
    video_id: Id | None = None
    occurred_at: AwareDatetime


class GiftSent(Event):
    topic = topics.GIFT_SENT
    key_field = "sender_id"

    sender_id: Id
    creator_id: Id
    gift_id: Id
    quantity: int
    coins: int
    diamonds: Diamonds
    stream_id: Id | None = None
    video_id: Id | None = None


class GiftRejected(Event):
    topic = topics.GIFT_REJECTED
    key_field = "sender_id"

    sender_id: Id
    reason: GiftRejectionReason


# --- the gift saga (internal: gifting <-> wallet, not in CONTRACT.md) -------------------

GiftDebitRefusal = Literal[
    "insufficient_coins", "spending_limit_exceeded", "account_frozen", "invalid_request"
]


class GiftDebitRequested(Event):
    """Gifting asks the wallet to pay for a valid gift request (request_id = the gift's).

    The wallet debits `coins` from the sender and credits the creator `diamonds` (the
    creator's share, exact) in one ledger transaction, or refuses; either way it answers
    once per request_id with `GiftDebitAnswered`.
    """

    topic = topics.GIFT_DEBIT_REQUESTED
    key_field = "sender_id"

    sender_id: Id
    creator_id: Id
    coins: int
    diamonds: Diamonds


class GiftDebitAnswered(Event):
    """The wallet's one answer to a `GiftDebitRequested`: debited, or refused with a reason."""

    topic = topics.GIFT_DEBIT_ANSWERED
    key_field = "sender_id"

    sender_id: Id
    creator_id: Id
    debited: bool
    reason: GiftDebitRefusal | None = None
    balance_after: int | None = None  # the sender's coins after the debit
    coins: int | None = None  # the coins asked for: gifting checks them against its request


# --- payout holds (internal: payout <-> wallet, not in CONTRACT.md) ---------------------


class DiamondsHoldRequested(Event):
    """Payout asks the wallet to reserve a creator's diamonds for a payout (request_id =
    the payout request's). The wallet answers once with `DiamondsHoldAnswered`; the hold
    is later posted (on `payout.payout-completed`) or voided (on `payout.payout-failed`).
    It must be settled before `deadline`."""

    topic = topics.DIAMONDS_HOLD_REQUESTED
    key_field = "creator_id"

    payout_id: Id
    creator_id: Id
    diamonds: int
    deadline: AwareDatetime


class DiamondsHoldAnswered(Event):
    """The wallet's one answer to a `DiamondsHoldRequested`: held, or refused."""

    topic = topics.DIAMONDS_HOLD_ANSWERED
    key_field = "creator_id"

    payout_id: Id
    creator_id: Id
    held: bool
    reason: Literal["insufficient_diamonds", "invalid_request"] | None = None
    # The diamonds asked for, which payout checks against its payout (0: not said, as
    # in answers from before this field).
    diamonds: int = 0


# --- payout ----------------------------------------------------------------------------


class CreatorUpdated(Message):
    topic = topics.CREATOR_UPDATED
    key_field = "creator_id"

    creator_id: Id
    verified: bool
    payout_method: Id
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    occurred_at: AwareDatetime


class PayoutRequested(Message):
    topic = topics.PAYOUT_REQUESTED
    key_field = "creator_id"

    request_id: Id
    creator_id: Id
    diamonds: int
    occurred_at: AwareDatetime


class PayoutCompleted(Event):
    topic = topics.PAYOUT_COMPLETED
    key_field = "creator_id"

    payout_id: Id
    creator_id: Id
    diamonds: int
    amount: Money


class PayoutFailed(Event):
    topic = topics.PAYOUT_FAILED
    key_field = "creator_id"

    creator_id: Id
    reason: PayoutFailureReason
    # The payout as recorded (added later; absent, None and 0 in older events): the
    # wallet voids a hold only for the payout_id and diamonds it holds.
    payout_id: Id | None = None
    diamonds: int = 0


REQUESTS: dict[str, type[Message]] = {
    model.topic: model
    for model in (
        PurchaseRequested,
        ChargebackReceived,
        SpendingLimitRequested,
        GiftRequested,
        CreatorUpdated,
        PayoutRequested,
    )
}
"""The requests upstream apps publish, by topic."""
