from shared.errors import PermanentError


class PaymentError(PermanentError):
    """Base of the payment service's errors."""
