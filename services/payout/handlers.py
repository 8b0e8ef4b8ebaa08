"""Kafka subscribers of the payout service."""

from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from services.payout.service import PayoutService
from shared import topics
from shared.broker import batch_subscription
from shared.consumer import DeadLetters, process
from shared.contracts import CreatorUpdated, DiamondsHoldAnswered, PayoutRequested
from shared.settings import ServiceSettings


def build_router(
    service: PayoutService, dead_letters: DeadLetters, settings: ServiceSettings
) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(topics.CREATOR_UPDATED, **batch_subscription(settings))
    async def on_creator_updated(message: KafkaMessage) -> None:
        """The identity system reports a creator's verification, payout method and
        currency; the newest report is kept. No answer."""
        deliveries = await dead_letters.sort(message.raw_message, CreatorUpdated)
        await process(deliveries, service.update_creators, dead_letters)

    @router.subscriber(topics.PAYOUT_REQUESTED, **batch_subscription(settings))
    async def on_payout_requested(message: KafkaMessage) -> None:
        """A creator cashes out diamonds; refused at once (payout-failed) or the wallet
        is asked to hold them (payout.diamonds-hold-requested)."""
        deliveries = await dead_letters.sort(message.raw_message, PayoutRequested)
        await process(deliveries, service.handle_requests, dead_letters)

    @router.subscriber(topics.DIAMONDS_HOLD_ANSWERED, **batch_subscription(settings))
    async def on_diamonds_hold_answered(message: KafkaMessage) -> None:
        """The wallet held the diamonds or refused (internal); held payouts are paid
        and end in payout-completed or payout-failed."""
        deliveries = await dead_letters.sort(message.raw_message, DiamondsHoldAnswered)
        await process(deliveries, service.handle_hold_answers, dead_letters)

    return router
