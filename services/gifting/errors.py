from shared.errors import PermanentError


class GiftingError(PermanentError):
    """Base of the gifting service's errors."""


class IdempotencyConflictError(GiftingError):
    """A request reuses a request_id with different content; it is refused, never processed."""

    reason = "idempotency_conflict"
