"""Payout's saga states that page (shared/saga_watch.py): payouts in doubt, holds asked
of the wallet and not answered."""

from shared.saga_watch import Probe, age_of_oldest, older_than


def probes(*, reconcile_after_s: float, stuck_after_s: float) -> list[Probe]:
    """Read through the partial indexes payouts_in_flight (held, unknown) and
    payouts_holding (migration 0003)."""
    return [
        Probe(
            "coinstream_payouts_in_doubt",
            "Payouts held or unknown for longer than RECONCILE_AFTER_S: the provider may "
            "have paid them, reconciliation asks it",
            "SELECT count(*) FROM payouts WHERE status IN ('held', 'unknown') AND "
            + older_than("updated_at"),
            (reconcile_after_s,),
        ),
        Probe(
            "coinstream_payouts_holding_stuck",
            "Payouts whose hold the wallet has not answered for longer than SAGA_STUCK_AFTER_S",
            "SELECT count(*) FROM payouts WHERE status = 'holding' AND " + older_than("updated_at"),
            (stuck_after_s,),
        ),
        Probe(
            "coinstream_payouts_in_flight_oldest_seconds",
            "Age of the oldest payout not yet completed or failed (0: none)",
            f"SELECT {age_of_oldest('updated_at')} FROM payouts "
            "WHERE status IN ('holding', 'held', 'unknown')",
        ),
    ]
