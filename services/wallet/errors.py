from shared.errors import PermanentError


class WalletError(PermanentError):
    """Base of the wallet's errors."""


class UnbalancedTransactionError(WalletError):
    """A transaction's postings do not sum to zero."""


class InsufficientFundsError(WalletError):
    """A posting would take a user account below zero."""
