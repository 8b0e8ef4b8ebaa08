class PaymentError(Exception):
    """Base of the payment service's errors."""
