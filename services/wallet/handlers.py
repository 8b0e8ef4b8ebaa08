"""Kafka subscribers of the wallet."""

from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from services.wallet.service import WalletService
from shared import topics
from shared.broker import batch_subscription
from shared.consumer import DeadLetters, process
from shared.contracts import PurchaseCompleted
from shared.settings import ServiceSettings


def build_router(
    service: WalletService, dead_letters: DeadLetters, settings: ServiceSettings
) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(topics.PURCHASE_COMPLETED, **batch_subscription(settings))
    async def on_purchase_completed(message: KafkaMessage) -> None:
        """The payment service charged a purchase; credit its coins (wallet.coins-credited)."""
        deliveries = await dead_letters.sort(message.raw_message, PurchaseCompleted)
        await process(deliveries, service.credit_purchases, dead_letters)

    return router
