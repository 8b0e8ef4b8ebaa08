"""What gifting consumes: one Kafka consumer for all its topics (shared/subscriptions.py)."""

from services.gifting.service import GiftingService
from shared import topics
from shared.contracts import GiftDebitAnswered, GiftRequested
from shared.subscriptions import Subscriptions, UseCase

consumed = Subscriptions[GiftingService]()


@consumed.topic(topics.GIFT_REQUESTED, GiftRequested)
def on_gift_requested(service: GiftingService) -> UseCase:
    """The live or video app sends a gift; a bad one is answered gift-rejected at
    once, a good one goes to the wallet to be paid (gifting.gift-debit-requested)."""
    return service.handle_requests


@consumed.topic(topics.GIFT_DEBIT_ANSWERED, GiftDebitAnswered)
def on_gift_debit_answered(service: GiftingService) -> UseCase:
    """The wallet paid for a gift or refused (internal saga step); answers
    gifting.gift-sent or gifting.gift-rejected and updates the stream's leaderboard."""
    return service.handle_answers
