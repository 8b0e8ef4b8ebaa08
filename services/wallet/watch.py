"""The wallet's saga states that page (shared/saga_watch.py): clawbacks waiting for their
purchase, payout holds past their deadline."""

from shared.saga_watch import Probe, age_of_oldest


def probes() -> list[Probe]:
    """pending_clawbacks stays small (a row lives until its purchase is credited); holds
    are read through the partial index holds_open (deadline, open only)."""
    return [
        Probe(
            "coinstream_clawbacks_pending",
            "Chargebacks received before the purchase they reverse was credited",
            "SELECT count(*) FROM pending_clawbacks",
        ),
        Probe(
            "coinstream_clawbacks_pending_oldest_seconds",
            "Age of the oldest pending clawback (0: none)",
            f"SELECT {age_of_oldest('received_at')} FROM pending_clawbacks",
        ),
        Probe(
            "coinstream_holds_open",
            "Payout holds open (diamonds reserved, the payout not settled yet)",
            "SELECT count(*) FROM holds WHERE status = 'open'",
        ),
        Probe(
            "coinstream_holds_past_deadline",
            "Payout holds still open after their deadline: the payout service did not settle them",
            "SELECT count(*) FROM holds WHERE status = 'open' AND deadline < now()",
        ),
    ]
