"""Cash-out use cases: check, reserve diamonds in the wallet, pay, settle, reconcile.

1. `handle_requests` records each payout request: refused at once (payout-failed), or
   priced and the wallet asked to hold the diamonds (payout.diamonds-hold-requested).
2. The wallet holds them, or refuses (`insufficient_diamonds`).
3. `handle_hold_answers` pays held payouts through the provider, keyed by payout_id,
   and settles each: payout-completed (the wallet posts the hold) or payout-failed
   (the wallet voids it). A lost answer leaves the payout `unknown`.
4. `reconcile` asks the provider about unknown payouts (and ones whose process died
   mid-call) and settles them: paid exactly once, or released.
"""

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter

from services.payout import domain
from services.payout.domain import Payout, PayoutRules
from services.payout.errors import PayoutOutcomeUnknownError
from services.payout.provider import PayoutProvider, Transfer
from services.payout.repository import PayoutRepository
from services.payout.settings import PayoutSettings
from shared import outbox
from shared.contracts import (
    CreatorUpdated,
    DiamondsHoldAnswered,
    DiamondsHoldRequested,
    Event,
    PayoutCompleted,
    PayoutFailed,
    PayoutRequested,
    utc_now,
)
from shared.db import Connection, Database
from shared.faults import crash_point
from shared.idempotency import first_of_each, refuse_if_different
from shared.retry import drain_forever

log = logging.getLogger(__name__)

Settlement = tuple[str, str | None, str | None]  # status, reason, provider reference


class PayoutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "coinstream_payouts",
            "Payouts that reached a final outcome, by outcome (completed or the reason)",
            ["outcome"],
            registry=registry,
        )
        self.unknown = Counter(
            "coinstream_payout_provider_unknown",
            "Provider calls whose answer was lost (timeouts), left to reconciliation",
            registry=registry,
        )
        self.reconciled = Counter(
            "coinstream_payouts_reconciled",
            "Payouts in doubt looked up at the provider, by what the lookup settled",
            ["settled"],
            registry=registry,
        )


class PayoutService:
    def __init__(
        self,
        db: Database,
        repository: PayoutRepository,
        provider: PayoutProvider,
        settings: PayoutSettings,
        metrics: PayoutMetrics,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._metrics = metrics
        self._db = db
        self._repository = repository
        self._provider = provider
        self._settings = settings
        self._clock = clock  # decides the UTC day of the daily limit
        self._rules = PayoutRules(
            min_diamonds=settings.min_payout_diamonds,
            daily_limit_usd_minor=settings.daily_limit_usd_minor,
            diamond_value_usd=settings.diamond_value_usd,
            usd_per_unit=settings.usd_per_unit,
        )

    async def payout(self, *, request_id: str) -> Payout | None:
        found = await self._repository.get_by_request_ids(self._db.pool, request_ids=[request_id])
        return found.get(request_id)

    async def payouts_of(self, *, creator_id: str, limit: int) -> list[Payout]:
        return await self._repository.list_by_creator(
            self._db.pool, creator_id=creator_id, limit=limit
        )

    async def update_creators(self, updates: Sequence[CreatorUpdated]) -> None:
        """Keep what the identity system says about each creator (newest wins)."""
        newest: dict[str, CreatorUpdated] = {}
        for update in updates:
            known = newest.get(update.creator_id)
            if known is None or known.occurred_at <= update.occurred_at:
                newest[update.creator_id] = update
        async with self._db.transaction() as conn:
            await self._repository.upsert_creators(conn, updates=list(newest.values()))

    async def handle_requests(self, requests: Sequence[PayoutRequested]) -> None:
        """Record new payout requests: refuse what fails a check, ask the wallet to hold
        the diamonds of the rest. A request_id seen before has no second effect."""
        new = first_of_each(requests, domain.fingerprint)
        async with self._db.transaction() as conn:
            fresh, payouts = await self._decide(conn, new)
            deadline = self._clock() + timedelta(seconds=self._settings.hold_timeout_s)
            added = await self._repository.add_new(
                conn,
                payouts=payouts,
                requested_at=[r.occurred_at for r in fresh],
                hold_deadline=deadline,
            )
            await self._check_repeats(conn, [r for r in new if r.request_id not in added])
            await outbox.enqueue(
                conn, [_first_step(p, deadline) for p in payouts if p.request_id in added]
            )
            crash_point("payout.requests.before_commit")
        self._count([p for p in payouts if p.request_id in added])

    async def _decide(
        self, conn: Connection, requests: list[PayoutRequested]
    ) -> tuple[list[PayoutRequested], list[Payout]]:
        """The requests not recorded yet, and the payouts they become.

        A request recorded before (a retry) is already in what was paid today: deciding
        it again would count it twice and could refuse a new request for good. It is
        looked up after `paid_since` locks its creator, so a concurrent batch that
        records it is seen."""
        creator_ids = sorted({r.creator_id for r in requests})
        creators = await self._repository.get_creators(conn, creator_ids=creator_ids)
        day = self._clock().replace(hour=0, minute=0, second=0, microsecond=0)
        paid = await self._repository.paid_since(conn, creator_ids=creator_ids, since=day)
        known = await self._repository.get_by_request_ids(
            conn, request_ids=[r.request_id for r in requests]
        )
        fresh = [r for r in requests if r.request_id not in known]
        decided = []
        for request in fresh:
            payout = domain.decide(
                request,
                creators.get(request.creator_id),
                self._rules,
                paid.get(request.creator_id, 0),
                payout_id=f"po_{uuid.uuid4().hex}",
            )
            if payout.status != "failed":  # counts against the rest of the batch
                paid[request.creator_id] = paid.get(request.creator_id, 0) + payout.usd_minor
            decided.append(payout)
        return fresh, decided

    async def _check_repeats(self, conn: Connection, repeated: list[PayoutRequested]) -> None:
        if not repeated:
            return
        known = await self._repository.get_by_request_ids(
            conn, request_ids=[r.request_id for r in repeated]
        )
        for request in repeated:
            refuse_if_different(known[request.request_id].fingerprint, request, domain.fingerprint)

    async def handle_hold_answers(self, answers: Sequence[DiamondsHoldAnswered]) -> None:
        """The wallet held the diamonds (pay them out) or refused (insufficient_diamonds).

        A payout moves from holding to held once; held ones are paid after the commit.
        A redelivered answer finds its payout held still (the process died before
        settling) and pays again under the same payout_id: the provider answers with
        the first result, so money moves once. An answer for a payout this service
        never asked a hold for, or that does not match it, fails the batch with a
        `PermanentError`: the consumer isolates and dead-letters it, nothing is paid.
        """
        async with self._db.transaction() as conn:
            moved = await self._answered(conn, answers)
            failed = await self._repository.move(
                conn,
                changes={
                    p.request_id: ("failed", p.reason, None) for p in moved if p.status == "failed"
                },
                from_statuses=["holding"],
            )
            await self._repository.move(
                conn,
                changes={p.request_id: ("held", None, None) for p in moved if p.status == "held"},
                from_statuses=["holding"],
            )
            await outbox.enqueue(conn, [_outcome(p) for p in failed])
        self._count(failed)
        crash_point("payout.held")
        held = await self._repository.get_by_request_ids(
            self._db.pool, request_ids=[a.request_id for a in answers if a.held]
        )
        to_pay = [p for p in held.values() if p.status == "held"]
        if to_pay:
            transfers = await asyncio.gather(*(self._pay(p) for p in to_pay))
            crash_point("payout.paid")
            await self._settle(dict(zip([p.request_id for p in to_pay], transfers, strict=True)))

    async def _answered(
        self, conn: Connection, answers: Sequence[DiamondsHoldAnswered]
    ) -> list[Payout]:
        """The payouts the answers move, checked against what this service recorded."""
        payouts = await self._repository.lock_by_request_ids(
            conn, request_ids=sorted({a.request_id for a in answers})
        )
        moved: dict[str, Payout] = {}
        for answer in answers:  # in order: a second answer sees what the first did
            payout = domain.answer_hold(payouts.get(answer.request_id), answer)
            if payout is not None:
                payouts[payout.request_id] = moved[payout.request_id] = payout
        return list(moved.values())

    async def _pay(self, payout: Payout) -> Transfer | None:
        """Pay once under the payout_id; None when the answer was lost."""
        assert payout.amount is not None and payout.payout_method is not None
        try:
            return await self._provider.pay(
                payout_id=payout.payout_id, method=payout.payout_method, amount=payout.amount
            )
        except PayoutOutcomeUnknownError:
            self._metrics.unknown.inc()
            log.warning("payout %s: provider outcome unknown, to reconcile", payout.payout_id)
            return None

    async def _settle(self, transfers: dict[str, Transfer | None]) -> None:
        async with self._db.transaction() as conn:
            settled = await self._settle_in(conn, transfers, from_statuses=["held"])
        self._count(settled)

    def _count(self, payouts: Sequence[Payout]) -> None:
        for payout in payouts:
            if payout.status in ("completed", "failed"):
                self._metrics.outcomes.labels(payout.reason or payout.status).inc()

    async def _settle_in(
        self, conn: Connection, transfers: dict[str, Transfer | None], from_statuses: list[str]
    ) -> list[Payout]:
        changes = {request_id: _settlement(t) for request_id, t in transfers.items()}
        settled = await self._repository.move(conn, changes=changes, from_statuses=from_statuses)
        await outbox.enqueue(conn, [_outcome(p) for p in settled if p.status != "unknown"])
        return settled

    async def reconcile(self) -> int:
        """Settle payouts in doubt by asking the provider; returns how many were looked up.

        A payout the provider has is settled as it says (paid exactly once, or
        released); one it never received is sent again under the same payout_id — not a
        blind retry, the provider said it has nothing.
        """
        stale_before = self._clock() - timedelta(seconds=self._settings.reconcile_after_s)
        async with self._db.transaction() as conn:
            doubtful = await self._repository.claim_in_doubt(
                conn, stale_before=stale_before, limit=100
            )
            if not doubtful:
                return 0
            transfers = {p.request_id: await self._look_up(p) for p in doubtful}
            settled = await self._settle_in(conn, transfers, from_statuses=["held", "unknown"])
        self._count(settled)
        for payout in settled:
            self._metrics.reconciled.labels(payout.status).inc()
        return len(doubtful)

    async def _look_up(self, payout: Payout) -> Transfer | None:
        """What the provider did with this payout, paying it if it never received it;
        None when the provider cannot be asked now: the payout stays `unknown` and is
        looked up again after `reconcile_after_s`, the other payouts of the pass settle."""
        try:
            known = await self._provider.status(payout_id=payout.payout_id)
        except PayoutOutcomeUnknownError as error:
            log.warning("payout %s: the provider cannot be asked now: %s", payout.payout_id, error)
            return None
        return known if known is not None else await self._pay(payout)

    async def reconcile_forever(self) -> None:
        """Run `reconcile` every `reconcile_interval_s` until cancelled."""
        await drain_forever(
            self.reconcile,
            interval_s=self._settings.reconcile_interval_s,
            what="payout reconciliation",
        )


def _settlement(transfer: Transfer | None) -> Settlement:
    if transfer is None:
        return "unknown", None, None
    if transfer.outcome == "paid":
        return "completed", None, transfer.provider_reference
    return "failed", "provider_rejected", transfer.provider_reference


def _first_step(payout: Payout, deadline: datetime) -> Event:
    if payout.status == "holding":
        return DiamondsHoldRequested(
            request_id=payout.request_id,
            payout_id=payout.payout_id,
            creator_id=payout.creator_id,
            diamonds=payout.diamonds,
            deadline=deadline,
        )
    return _outcome(payout)


def _outcome(payout: Payout) -> Event:
    if payout.status == "completed":
        assert payout.amount is not None
        return PayoutCompleted(
            request_id=payout.request_id,
            payout_id=payout.payout_id,
            creator_id=payout.creator_id,
            diamonds=payout.diamonds,
            amount=payout.amount,
        )
    assert payout.reason is not None
    return PayoutFailed(
        request_id=payout.request_id,
        creator_id=payout.creator_id,
        reason=payout.reason,
        # The wallet releases a hold only for the payout_id and diamonds it holds.
        payout_id=payout.payout_id,
        diamonds=payout.diamonds,
    )
