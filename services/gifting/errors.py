from shared.errors import PermanentError


class GiftingError(PermanentError):
    """Base of the gifting service's errors: the message at fault is dead-lettered."""


class UnknownGiftRequestError(GiftingError):
    """A gift-debit answer names a gift request this service never recorded."""

    reason = "unknown_state"


class GiftAnswerMismatchError(GiftingError):
    """A gift-debit answer does not match its request (another sender, creator or
    amount), or the request is not waiting for it (never sent to the wallet, or
    answered otherwise already)."""

    reason = "state_mismatch"
