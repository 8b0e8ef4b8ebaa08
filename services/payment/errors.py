class ProviderUnavailableError(Exception):
    """The provider did not answer (timeout, 5xx): transient, the charge may be retried
    with the same idempotency key."""
