"""Kafka subscribers of the payment service."""

from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage

from services.payment.service import PaymentService
from shared import topics
from shared.broker import batch_subscription
from shared.consumer import DeadLetters, process
from shared.contracts import ChargebackReceived, PurchaseRequested
from shared.settings import ServiceSettings


def build_router(
    service: PaymentService, dead_letters: DeadLetters, settings: ServiceSettings
) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(topics.PURCHASE_REQUESTED, **batch_subscription(settings))
    async def on_purchase_requested(message: KafkaMessage) -> None:
        """Upstream apps ask to buy a coin package; answers purchase-completed or -failed.

        A charge whose answer is lost (a timeout, a crash between charge and settle)
        keeps the purchase `pending` until reconciliation asks the provider by the
        request_id: its outcome comes then, never a guess. Simulated card provider
        (`payment_method`, the default outside production): `pm_card_ok` approved;
        `pm_card_declined` declined (`payment_declined`); `pm_card_flaky` the first
        attempt times out, the retry is approved, charged once; `pm_card_down`
        unreachable, never charged (`provider_unavailable` once reconciliation finds no
        charge); `pm_card_timeout` charged but the answer is lost: pending until
        reconciliation finds the charge, then completed, coins credited once.
        """
        deliveries = await dead_letters.sort(message.raw_message, PurchaseRequested)
        await process(deliveries, service.handle_requests, dead_letters)

    @router.subscriber(topics.CHARGEBACK_RECEIVED, **batch_subscription(settings))
    async def on_chargeback_received(message: KafkaMessage) -> None:
        """The card network's webhook relay reports a chargeback; answers purchase-reversed."""
        deliveries = await dead_letters.sort(message.raw_message, ChargebackReceived)
        await process(deliveries, service.handle_chargebacks, dead_letters)

    return router
