"""What the wallet consumes: one Kafka consumer for all its topics (shared/subscriptions.py)."""

from services.wallet.service import WalletService
from shared import topics
from shared.contracts import (
    DiamondsHoldRequested,
    GiftDebitRequested,
    PayoutCompleted,
    PayoutFailed,
    PurchaseCompleted,
    PurchaseReversed,
    SpendingLimitRequested,
)
from shared.subscriptions import Subscriptions, UseCase

consumed = Subscriptions[WalletService]()


@consumed.topic(topics.PURCHASE_COMPLETED, PurchaseCompleted)
def on_purchase_completed(service: WalletService) -> UseCase:
    """The payment service charged a purchase; credit its coins (wallet.coins-credited)."""
    return service.purchases.credit


@consumed.topic(topics.PURCHASE_REVERSED, PurchaseReversed)
def on_purchase_reversed(service: WalletService) -> UseCase:
    """The payment service reversed a purchase after a chargeback; claw its coins
    back, even below zero, which freezes spending (wallet.coins-clawed-back)."""
    return service.purchases.claw_back


@consumed.topic(topics.SPENDING_LIMIT_REQUESTED, SpendingLimitRequested)
def on_spending_limit_requested(service: WalletService) -> UseCase:
    """A user sets (or removes) their own coin limit per day, week or month, through
    an upstream app; answers wallet.spending-limit-updated. Gifting enforces it."""
    return service.limits.update


@consumed.topic(topics.GIFT_DEBIT_REQUESTED, GiftDebitRequested)
def on_gift_debit_requested(service: WalletService) -> UseCase:
    """Gifting asks to pay for a gift (internal saga step): debit the sender's coins
    and credit the creator's diamonds at once, or refuse; answers
    wallet.gift-debit-answered, plus wallet.coins-debited and -diamonds-credited."""
    return service.gifts.debit


@consumed.topic(topics.DIAMONDS_HOLD_REQUESTED, DiamondsHoldRequested)
def on_diamonds_hold_requested(service: WalletService) -> UseCase:
    """Payout reserves a creator's diamonds before paying them out (internal);
    answers wallet.diamonds-hold-answered: held, or insufficient_diamonds."""
    return service.holds.place


@consumed.topic(topics.PAYOUT_COMPLETED, PayoutCompleted)
def on_payout_completed(service: WalletService) -> UseCase:
    """Payout paid a creator: the diamonds on hold leave for payout clearing."""
    return service.holds.close


@consumed.topic(topics.PAYOUT_FAILED, PayoutFailed)
def on_payout_failed(service: WalletService) -> UseCase:
    """A payout failed: diamonds it held, if any, are available again."""
    return service.holds.close
