"""Payment's saga states that page (shared/saga_watch.py); `coinstream_purchases_in_doubt`
is the reconciliation loop's own gauge (services/payment/service.py)."""

from shared.saga_watch import Probe, age_of_oldest


def probes() -> list[Probe]:
    """Read through the partial index purchases_pending (pending only)."""
    return [
        Probe(
            "coinstream_purchases_pending_oldest_seconds",
            "Age of the oldest pending purchase (0: none pending)",
            f"SELECT {age_of_oldest('created_at')} FROM purchases WHERE status = 'pending'",
        ),
    ]
