from shared.errors import PermanentError


class WalletError(PermanentError):
    """Base of the wallet's errors."""


class UnbalancedTransactionError(WalletError):
    """A transaction's postings do not sum to zero."""


class InsufficientFundsError(WalletError):
    """A posting would take an account below zero (and it is no clawback)."""


class InvalidPurchaseError(WalletError):
    """A purchase-completed event that parses but makes no sense (coins <= 0, bonus < 0)."""


class InvalidReversalError(WalletError):
    """A purchase-reversed event that parses but makes no sense (coins <= 0)."""


class InvalidGiftDebitError(WalletError):
    """A gift debit request that parses but makes no sense (no coins, a self gift, a
    creator share above the coins' value or finer than a diamond unit)."""


class InvalidHoldError(WalletError):
    """A hold request that parses but makes no sense (no diamonds)."""


class InvalidSpendingLimitError(WalletError):
    """A spending-limit request that parses but sets a limit no count of coins can hold
    (max_coins of 2^63 or more). The contract has no failure outcome for a spending
    limit, so it is dead-lettered as `invalid_request` for an operator to answer."""

    reason = "invalid_request"


class UnknownHoldError(WalletError):
    """A payout outcome names a hold the wallet never placed (forged, or a bug upstream):
    nothing is posted or voided, the event is dead-lettered for an operator."""

    reason = "unknown_state"


class HoldMismatchError(WalletError):
    """A payout outcome does not match the hold it names (another payout_id, creator or
    amount), or the hold was already closed the other way: the hold is left as it is."""

    reason = "state_mismatch"


class ReversalMismatchError(WalletError):
    """A reversal names a credited purchase but another user or amount than credited."""

    reason = "state_mismatch"
