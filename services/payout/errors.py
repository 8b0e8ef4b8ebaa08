from shared.errors import PermanentError


class PayoutOutcomeUnknownError(Exception):
    """The provider did not answer (timeout): the payout may or may not have been made.
    Never retried blindly: reconciliation asks the provider for its status."""


class PayoutError(PermanentError):
    """Base of the payout service's errors: the message at fault is dead-lettered."""


class UnknownPayoutError(PayoutError):
    """A hold answer names a payout this service never asked a hold for."""

    reason = "unknown_state"


class HoldAnswerMismatchError(PayoutError):
    """A hold answer does not match its payout (another payout_id, creator or amount),
    or the payout is not waiting for it (refused before its hold, or answered otherwise)."""

    reason = "state_mismatch"
