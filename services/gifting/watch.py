"""Gifting's saga states that page (shared/saga_watch.py): gifts waiting for the wallet."""

from shared.saga_watch import Probe, age_of_oldest, older_than


def probes(*, stuck_after_s: float) -> list[Probe]:
    """Read through the partial index gift_requests_pending (created_at, pending only)."""
    return [
        Probe(
            "coinstream_gifts_pending_stuck",
            "Gifts pending (waiting for the wallet's answer) longer than SAGA_STUCK_AFTER_S",
            "SELECT count(*) FROM gift_requests WHERE status = 'pending' AND "
            + older_than("created_at"),
            (stuck_after_s,),
        ),
        Probe(
            "coinstream_gifts_pending_oldest_seconds",
            "Age of the oldest pending gift (0: none pending)",
            f"SELECT {age_of_oldest('created_at')} FROM gift_requests WHERE status = 'pending'",
        ),
    ]
