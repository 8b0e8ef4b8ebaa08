from shared.errors import PermanentError


class PaymentError(PermanentError):
    """Base of the payment service's errors."""


class IdempotencyConflictError(PaymentError):
    """A request reuses a request_id with different content; it is refused, never processed."""

    reason = "idempotency_conflict"


class ProviderUnavailableError(Exception):
    """The provider did not answer (timeout, 5xx): transient, the charge may be retried
    with the same idempotency key."""
