"""Kafka subscribers of the wallet."""

from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from services.wallet.service import WalletService
from shared import topics
from shared.broker import batch_subscription
from shared.consumer import DeadLetters, process
from shared.contracts import (
    DiamondsHoldRequested,
    GiftDebitRequested,
    PayoutCompleted,
    PayoutFailed,
    PurchaseCompleted,
    PurchaseReversed,
    SpendingLimitRequested,
)
from shared.settings import ServiceSettings


def build_router(
    service: WalletService, dead_letters: DeadLetters, settings: ServiceSettings
) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(topics.PURCHASE_COMPLETED, **batch_subscription(settings))
    async def on_purchase_completed(message: KafkaMessage) -> None:
        """The payment service charged a purchase; credit its coins (wallet.coins-credited)."""
        deliveries = await dead_letters.sort(message.raw_message, PurchaseCompleted)
        await process(deliveries, service.purchases.credit, dead_letters)

    @router.subscriber(topics.PURCHASE_REVERSED, **batch_subscription(settings))
    async def on_purchase_reversed(message: KafkaMessage) -> None:
        """The payment service reversed a purchase after a chargeback; claw its coins
        back, even below zero, which freezes spending (wallet.coins-clawed-back)."""
        deliveries = await dead_letters.sort(message.raw_message, PurchaseReversed)
        await process(deliveries, service.purchases.claw_back, dead_letters)

    @router.subscriber(topics.SPENDING_LIMIT_REQUESTED, **batch_subscription(settings))
    async def on_spending_limit_requested(message: KafkaMessage) -> None:
        """A user sets (or removes) their own coin limit per day, week or month, through
        an upstream app; answers wallet.spending-limit-updated. Gifting enforces it."""
        deliveries = await dead_letters.sort(message.raw_message, SpendingLimitRequested)
        await process(deliveries, service.limits.update, dead_letters)

    @router.subscriber(topics.GIFT_DEBIT_REQUESTED, **batch_subscription(settings))
    async def on_gift_debit_requested(message: KafkaMessage) -> None:
        """Gifting asks to pay for a gift (internal saga step): debit the sender's coins
        and credit the creator's diamonds at once, or refuse; answers
        wallet.gift-debit-answered, plus wallet.coins-debited and -diamonds-credited."""
        deliveries = await dead_letters.sort(message.raw_message, GiftDebitRequested)
        await process(deliveries, service.gifts.debit, dead_letters)

    @router.subscriber(topics.DIAMONDS_HOLD_REQUESTED, **batch_subscription(settings))
    async def on_diamonds_hold_requested(message: KafkaMessage) -> None:
        """Payout reserves a creator's diamonds before paying them out (internal);
        answers wallet.diamonds-hold-answered: held, or insufficient_diamonds."""
        deliveries = await dead_letters.sort(message.raw_message, DiamondsHoldRequested)
        await process(deliveries, service.holds.place, dead_letters)

    @router.subscriber(topics.PAYOUT_COMPLETED, **batch_subscription(settings))
    async def on_payout_completed(message: KafkaMessage) -> None:
        """Payout paid a creator: the diamonds on hold leave for payout clearing."""
        deliveries = await dead_letters.sort(message.raw_message, PayoutCompleted)
        await process(deliveries, service.holds.close, dead_letters)

    @router.subscriber(topics.PAYOUT_FAILED, **batch_subscription(settings))
    async def on_payout_failed(message: KafkaMessage) -> None:
        """A payout failed: diamonds it held, if any, are available again."""
        deliveries = await dead_letters.sort(message.raw_message, PayoutFailed)
        await process(deliveries, service.holds.close, dead_letters)

    return router
