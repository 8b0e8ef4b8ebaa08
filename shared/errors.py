"""Errors every service shares."""


class PermanentError(Exception):
    """Processing this message can never succeed; retrying would only stall its partition.

    Each service's error tree derives from it, so a consumer dead-letters the message
    (with this `reason` in its `dlq.reason` header) instead of retrying it forever.
    """

    reason: str = "processing_failed"
