from shared.errors import PermanentError


class PayoutError(PermanentError):
    """Base of the payout service's errors."""


class IdempotencyConflictError(PayoutError):
    """A request reuses a request_id with different content; it is refused, never processed."""

    reason = "idempotency_conflict"


class PayoutOutcomeUnknownError(Exception):
    """The provider did not answer (timeout): the payout may or may not have been made.
    Never retried blindly: reconciliation asks the provider for its status."""
