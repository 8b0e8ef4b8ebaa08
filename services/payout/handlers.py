"""What the payout service consumes: one Kafka consumer for all its topics
(shared/subscriptions.py)."""

from services.payout.service import PayoutService
from shared import topics
from shared.contracts import CreatorUpdated, DiamondsHoldAnswered, PayoutRequested
from shared.subscriptions import Subscriptions, UseCase

consumed = Subscriptions[PayoutService]()


@consumed.topic(topics.CREATOR_UPDATED, CreatorUpdated)
def on_creator_updated(service: PayoutService) -> UseCase:
    """The identity system reports a creator's verification, payout method and
    currency; the newest report is kept. No answer."""
    return service.update_creators


@consumed.topic(topics.PAYOUT_REQUESTED, PayoutRequested)
def on_payout_requested(service: PayoutService) -> UseCase:
    """A creator cashes out diamonds; refused at once (payout-failed) or the wallet
    is asked to hold them (payout.diamonds-hold-requested)."""
    return service.handle_requests


@consumed.topic(topics.DIAMONDS_HOLD_ANSWERED, DiamondsHoldAnswered)
def on_diamonds_hold_answered(service: PayoutService) -> UseCase:
    """The wallet held the diamonds or refused (internal); held payouts are paid
    and end in payout-completed or payout-failed."""
    return service.handle_hold_answers
