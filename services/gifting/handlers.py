"""Kafka subscribers of the gifting service."""

from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from services.gifting.service import GiftingService
from shared import topics
from shared.broker import batch_subscription
from shared.consumer import DeadLetters, process
from shared.contracts import GiftDebitAnswered, GiftRequested
from shared.settings import ServiceSettings


def build_router(
    service: GiftingService, dead_letters: DeadLetters, settings: ServiceSettings
) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(topics.GIFT_REQUESTED, **batch_subscription(settings))
    async def on_gift_requested(message: KafkaMessage) -> None:
        """The live or video app sends a gift; a bad one is answered gift-rejected at
        once, a good one goes to the wallet to be paid (gifting.gift-debit-requested)."""
        deliveries = await dead_letters.sort(message.raw_message, GiftRequested)
        await process(deliveries, service.handle_requests, dead_letters)

    @router.subscriber(topics.GIFT_DEBIT_ANSWERED, **batch_subscription(settings))
    async def on_gift_debit_answered(message: KafkaMessage) -> None:
        """The wallet paid for a gift or refused (internal saga step); answers
        gifting.gift-sent or gifting.gift-rejected and updates the stream's leaderboard."""
        deliveries = await dead_letters.sort(message.raw_message, GiftDebitAnswered)
        await process(deliveries, service.handle_answers, dead_letters)

    return router
