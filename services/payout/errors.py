class PayoutOutcomeUnknownError(Exception):
    """The provider did not answer (timeout): the payout may or may not have been made.
    Never retried blindly: reconciliation asks the provider for its status."""
