"""Topic names: the public ones of CONTRACT.md and their dead-letter twins.

Messages are keyed by the account they concern, so one account's events stay in order
within a partition.
"""

import functools
from typing import Final

from aiokafka.partitioner import murmur2

PURCHASE_REQUESTED: Final = "payment.purchase-requested"
PURCHASE_COMPLETED: Final = "payment.purchase-completed"
PURCHASE_FAILED: Final = "payment.purchase-failed"
CHARGEBACK_RECEIVED: Final = "payment.chargeback-received"
PURCHASE_REVERSED: Final = "payment.purchase-reversed"

SPENDING_LIMIT_REQUESTED: Final = "wallet.spending-limit-requested"
SPENDING_LIMIT_UPDATED: Final = "wallet.spending-limit-updated"
COINS_CREDITED: Final = "wallet.coins-credited"
COINS_DEBITED: Final = "wallet.coins-debited"
DIAMONDS_CREDITED: Final = "wallet.diamonds-credited"
COINS_CLAWED_BACK: Final = "wallet.coins-clawed-back"

GIFT_REQUESTED: Final = "gifting.gift-requested"
GIFT_SENT: Final = "gifting.gift-sent"
GIFT_REJECTED: Final = "gifting.gift-rejected"

CREATOR_UPDATED: Final = "payout.creator-updated"
PAYOUT_REQUESTED: Final = "payout.payout-requested"
PAYOUT_COMPLETED: Final = "payout.payout-completed"
PAYOUT_FAILED: Final = "payout.payout-failed"

# Internal: the gift saga between gifting and wallet (docs/architecture.md). Not part of
# CONTRACT.md; their shapes may change with the services.
GIFT_DEBIT_REQUESTED: Final = "gifting.gift-debit-requested"
GIFT_DEBIT_ANSWERED: Final = "wallet.gift-debit-answered"
# Internal: payout reserves diamonds in the wallet before calling its provider.
DIAMONDS_HOLD_REQUESTED: Final = "payout.diamonds-hold-requested"
DIAMONDS_HOLD_ANSWERED: Final = "wallet.diamonds-hold-answered"

PUBLIC_TOPICS: Final[tuple[str, ...]] = (
    PURCHASE_REQUESTED,
    PURCHASE_COMPLETED,
    PURCHASE_FAILED,
    CHARGEBACK_RECEIVED,
    PURCHASE_REVERSED,
    SPENDING_LIMIT_REQUESTED,
    SPENDING_LIMIT_UPDATED,
    COINS_CREDITED,
    COINS_DEBITED,
    DIAMONDS_CREDITED,
    COINS_CLAWED_BACK,
    GIFT_REQUESTED,
    GIFT_SENT,
    GIFT_REJECTED,
    CREATOR_UPDATED,
    PAYOUT_REQUESTED,
    PAYOUT_COMPLETED,
    PAYOUT_FAILED,
)

INTERNAL_TOPICS: Final[tuple[str, ...]] = (
    GIFT_DEBIT_REQUESTED,
    GIFT_DEBIT_ANSWERED,
    DIAMONDS_HOLD_REQUESTED,
    DIAMONDS_HOLD_ANSWERED,
)

DLQ_SUFFIX: Final = ".dlq"


def dlq(topic: str) -> str:
    """The dead-letter topic of `topic`."""
    return topic + DLQ_SUFFIX


def all_topics() -> list[str]:
    """Every topic the system needs, dead-letter topics included, in a stable order."""
    return [name for topic in PUBLIC_TOPICS + INTERNAL_TOPICS for name in (topic, dlq(topic))]


@functools.lru_cache(maxsize=1 << 16)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record keyed `key` in a topic of
    `partitions` partitions: murmur2 of the key, made positive, modulo the count (the Java
    client's `Utils.toPositive(Utils.murmur2(key)) % n`, which aiokafka copies).

    aiokafka's murmur2 is pure Python (about 5% of a service's CPU when computed for every
    record published); the same accounts come back again and again, so it is remembered.
    """
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions
