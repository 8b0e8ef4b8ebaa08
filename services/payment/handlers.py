"""What the payment service consumes: one Kafka consumer for all its topics
(shared/subscriptions.py)."""

from services.payment.service import PaymentService
from shared import topics
from shared.contracts import ChargebackReceived, PurchaseRequested
from shared.subscriptions import Subscriptions, UseCase

consumed = Subscriptions[PaymentService]()


@consumed.topic(topics.PURCHASE_REQUESTED, PurchaseRequested)
def on_purchase_requested(service: PaymentService) -> UseCase:
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
    return service.handle_requests


@consumed.topic(topics.CHARGEBACK_RECEIVED, ChargebackReceived)
def on_chargeback_received(service: PaymentService) -> UseCase:
    """The card network's webhook relay reports a chargeback; answers purchase-reversed."""
    return service.handle_chargebacks
