"""Recharge use cases: record a request, charge it, publish its one outcome; chargebacks."""

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from services.payment.domain import (
    Activity,
    Decider,
    NoticeOutcome,
    Offer,
    Purchase,
    RiskLimits,
    fingerprint,
    notice_refusal,
)
from services.payment.errors import ProviderUnavailableError
from services.payment.provider import CardProvider, Charge
from services.payment.repository import PaymentRepository
from services.payment.settings import PaymentSettings
from shared import outbox
from shared.contracts import (
    ChargebackReceived,
    Event,
    PurchaseCompleted,
    PurchaseFailed,
    PurchaseRequested,
    PurchaseReversed,
)
from shared.db import Connection, Database
from shared.faults import crash_point
from shared.idempotency import first_of_each, refuse_if_different
from shared.logs import record_fields
from shared.money import Money
from shared.retry import drain_forever

log = logging.getLogger(__name__)


class PaymentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_doubt = Gauge(
            "coinstream_purchases_in_doubt",
            "Purchases pending past reconcile_after_s: the provider may have charged them",
            registry=registry,
        )
        self.reconciled_at = Gauge(
            "coinstream_purchases_reconciled_timestamp_seconds",
            "When this replica last finished a reconciliation pass (Unix time; 0: never): "
            "coinstream_purchases_in_doubt is as of then",
            registry=registry,
        )
        self.unknown = Counter(
            "coinstream_purchase_provider_unknown",
            "Charges whose answer was lost (timeouts, unreachable), left to reconciliation",
            registry=registry,
        )
        self.reconciled = Counter(
            "coinstream_purchases_reconciled",
            "Purchases in doubt looked up at the provider, by outcome (completed, the "
            "failure reason, or still_unknown when the provider could not be asked)",
            ["outcome"],
            registry=registry,
        )


def _outcome_event(purchase: Purchase) -> Event:
    if purchase.status == "completed":
        assert purchase.payment_id is not None
        return PurchaseCompleted(
            request_id=purchase.request_id,
            payment_id=purchase.payment_id,
            user_id=purchase.user_id,
            package_id=purchase.package_id,
            coins=purchase.coins,
            bonus_coins=purchase.bonus_coins,
            price=purchase.price,
        )
    assert purchase.reason is not None
    return PurchaseFailed(
        request_id=purchase.request_id, user_id=purchase.user_id, reason=purchase.reason
    )


class PaymentService:
    def __init__(
        self,
        db: Database,
        repository: PaymentRepository,
        provider: CardProvider,
        settings: PaymentSettings,
        metrics: PaymentMetrics,
    ) -> None:
        self._metrics = metrics
        self._db = db
        self._repository = repository
        self._provider = provider
        self._settings = settings
        self._limits = RiskLimits(
            daily_cap_usd_minor=settings.daily_spend_cap_usd_minor,
            purchases_per_hour=settings.purchases_per_hour,
            usd_per_unit=settings.usd_per_unit,
        )

    async def offers(self, *, currency: str) -> list[Offer]:
        return await self._repository.list_offers(self._db.pool, currencies=[currency])

    async def purchase(self, *, request_id: str) -> Purchase | None:
        return await self._repository.get_by_request_id(self._db.pool, request_id=request_id)

    async def handle_requests(self, requests: Sequence[PurchaseRequested]) -> None:
        """Record new requests (refusing what fails a check), charge the rest, settle them.

        The request_id is the idempotency key: a repeated request finds its purchase and
        has no second effect; one still pending (a crash mid-charge) is charged again
        with the same key, which the provider answers with the first result. A charge
        whose answer is lost leaves its purchase pending for `reconcile`: never failed
        while the provider may have charged.
        """
        pending = await self._record(first_of_each(requests, fingerprint))
        if pending:
            charges = await asyncio.gather(*(self._charge(purchase) for purchase in pending))
            crash_point("payment.charged")
            await self._settle(pending, charges)
            crash_point("payment.settled")

    async def _record(self, requests: Sequence[PurchaseRequested]) -> list[Purchase]:
        async with self._db.transaction() as conn:
            known = await self._repository.get_by_request_ids(
                conn, request_ids=[r.request_id for r in requests]
            )
            for request in requests:
                if request.request_id in known:
                    refuse_if_different(known[request.request_id].fingerprint, request, fingerprint)
            new = [r for r in requests if r.request_id not in known]
            decider = await self._decider(conn, new)
            now = datetime.now(UTC)
            decided = [decider.decide(r, now=now) for r in new]
            await self._repository.add_many(
                conn, purchases=decided, requested_at=[r.occurred_at for r in new]
            )
            await outbox.enqueue(conn, [_outcome_event(p) for p in decided if p.status == "failed"])
            # A redelivered request still pending is charged again: claim it first, so
            # reconciliation does not judge it uncharged while the charge is under way.
            charging = set(
                await self._repository.touch_pending(
                    conn,
                    request_ids=[p.request_id for p in known.values() if p.status == "pending"],
                )
            )
        crash_point("payment.recorded")
        # In request order, so one user's outcomes are published in the order asked.
        purchases = {p.request_id: p for p in [*known.values(), *decided]}
        charging |= {p.request_id for p in decided if p.status == "pending"}
        return [purchases[r.request_id] for r in requests if r.request_id in charging]

    async def _decider(self, conn: Connection, requests: Sequence[PurchaseRequested]) -> Decider:
        # The whole catalog: a package priced in another currency is a price mismatch.
        offers = await self._repository.list_offers(conn) if requests else []
        now = datetime.now(UTC)
        activity: dict[str, Activity] = {}
        for user_id, currency, spent, attempts in await self._repository.list_activity(
            conn,
            user_ids=sorted({r.user_id for r in requests}),
            day_start=now.replace(hour=0, minute=0, second=0, microsecond=0),
            hour_ago=now - timedelta(hours=1),
        ):
            seen = activity.setdefault(user_id, Activity())
            if spent and currency in self._limits.usd_per_unit:
                seen.spent_today_usd_minor += self._limits.in_usd_minor(
                    Money(amount_minor=spent, currency=currency)
                )
            seen.purchases_last_hour += attempts
        return Decider(
            self._limits, {(o.package_id, o.price.currency): o for o in offers}, activity
        )

    async def _charge(self, purchase: Purchase) -> Charge | None:
        """Charge with retries on transient provider errors; None once the budget is spent
        (the outcome is then unknown: the provider may have charged).

        The request_id is the idempotency key: a retry, a redelivery or a restart asks
        for the same charge, never a second one.
        """
        charge = functools.partial(
            self._provider.charge,
            idempotency_key=purchase.request_id,
            method=purchase.payment_method,
            amount=purchase.price,
        )
        with contextlib.suppress(ProviderUnavailableError):
            return await charge()  # the common case, without the retry machinery
        if self._settings.provider_max_attempts < 2:
            return None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._settings.provider_max_attempts - 1),
                wait=wait_exponential(multiplier=self._settings.provider_retry_base_s),
                retry=retry_if_exception_type(ProviderUnavailableError),
                reraise=True,
            ):
                with attempt:
                    return await charge()
        except (ProviderUnavailableError, RetryError):
            return None
        raise AssertionError("unreachable: AsyncRetrying reraises after its last attempt")

    async def _settle(self, pending: Sequence[Purchase], charges: Sequence[Charge | None]) -> None:
        known: dict[str, Charge | None] = {
            p.request_id: c for p, c in zip(pending, charges, strict=True) if c is not None
        }
        for purchase in pending:
            if purchase.request_id not in known:
                self._metrics.unknown.inc()
                log.warning(
                    "purchase %s: charge outcome unknown, to reconcile",
                    purchase.request_id,
                    extra=record_fields(request_id=purchase.request_id),
                )
        async with self._db.transaction() as conn:
            settled = await self._settle_in(conn, known)
            order = {p.request_id: i for i, p in enumerate(pending)}
            settled.sort(key=lambda p: order[p.request_id])
            await outbox.enqueue(conn, [_outcome_event(p) for p in settled])

    async def _settle_in(
        self, conn: Connection, charges: dict[str, Charge | None]
    ) -> list[Purchase]:
        """Move pending purchases to what the provider said (None: it holds no charge);
        returns those this call moved."""
        outcomes = [_outcome(charge) for charge in charges.values()]
        return await self._repository.settle_many(
            conn,
            request_ids=list(charges),
            statuses=[status for status, _ in outcomes],
            reasons=[reason for _, reason in outcomes],
            payment_ids=[
                f"pay_{uuid.uuid4().hex}" if s == "completed" else None for s, _ in outcomes
            ],
            provider_references=[c.provider_reference if c else None for c in charges.values()],
        )

    async def reconcile(self) -> int:
        """Settle purchases in doubt by asking the provider; returns how many were settled.

        A purchase pending for `reconcile_after_s` since it was last charged (its answer
        was lost, or its process died between charge and settle) is looked up by its
        idempotency key: a charge found completes it (approved) or fails it (declined);
        no charge fails it as `provider_unavailable` — no charge call is under way any
        more (see `reconcile_after_s`). One the provider cannot be asked about stays
        pending and is looked up again after another `reconcile_after_s`.
        """
        stale_before = datetime.now(UTC) - timedelta(seconds=self._settings.reconcile_after_s)
        async with self._db.transaction() as conn:
            doubtful = await self._repository.claim_in_doubt(
                conn, stale_before=stale_before, limit=100
            )
            found = await asyncio.gather(
                *(self._provider.lookup(idempotency_key=p.request_id) for p in doubtful),
                return_exceptions=True,
            )
            known: dict[str, Charge | None] = {}
            unknown: list[str] = []
            for purchase, answer in zip(doubtful, found, strict=True):
                if isinstance(answer, ProviderUnavailableError):
                    unknown.append(purchase.request_id)
                elif isinstance(answer, BaseException):
                    raise answer
                else:
                    known[purchase.request_id] = answer
            # Looked up again only after another reconcile_after_s, not in a tight loop.
            await self._repository.touch_pending(conn, request_ids=unknown)
            settled = await self._settle_in(conn, known)
            await outbox.enqueue(conn, [_outcome_event(p) for p in settled])
        self._metrics.in_doubt.set(
            await self._repository.count_in_doubt(self._db.pool, stale_before=stale_before)
        )
        self._metrics.reconciled_at.set_to_current_time()  # CoinstreamWatchStale reads it
        for purchase in settled:
            self._metrics.reconciled.labels(purchase.reason or purchase.status).inc()
        self._metrics.reconciled.labels("still_unknown").inc(len(unknown))
        return len(settled)

    async def reconcile_forever(self) -> None:
        """Run `reconcile` every `reconcile_interval_s` until cancelled."""
        await drain_forever(
            self.reconcile,
            interval_s=self._settings.reconcile_interval_s,
            what="purchase reconciliation",
        )

    async def handle_chargebacks(self, chargebacks: Sequence[ChargebackReceived]) -> None:
        """Reverse completed purchases (payment.purchase-reversed); record every chargeback.

        A chargeback for an unknown or already reversed payment has no effect but is
        kept, with what it did, for the operator.
        """
        async with self._db.transaction() as conn:
            events: list[Event] = []
            for chargeback in chargebacks:
                reversed_ = await self._reverse(conn, chargeback)
                if reversed_ is not None:
                    events.append(reversed_)
            await outbox.enqueue(conn, events)

    async def accept_chargeback_notice(self, notice: ChargebackReceived) -> NoticeOutcome:
        """Turn a signed notice from the provider's webhook into payment.chargeback-received.

        The notice's row and the message commit together, so a replay of the same
        chargeback_id has no second effect. A notice that does not name a payment this
        service completed for that user is refused and nothing is recorded. The reversal
        itself is `handle_chargebacks`' work, once the message comes back from Kafka.
        """
        async with self._db.transaction() as conn:
            purchase = await self._repository.get_by_payment_id(conn, payment_id=notice.payment_id)
            refusal = notice_refusal(purchase, user_id=notice.user_id)
            if refusal is not None:
                return refusal
            first_time = await self._repository.add_webhook_notice(
                conn,
                chargeback_id=notice.chargeback_id,
                payment_id=notice.payment_id,
                user_id=notice.user_id,
                occurred_at=notice.occurred_at,
            )
            if not first_time:
                known = await self._repository.get_webhook_notice(
                    conn, chargeback_id=notice.chargeback_id
                )
                same = known == (notice.payment_id, notice.user_id)
                return "duplicate" if same else "idempotency_conflict"
            await outbox.enqueue_request(conn, notice, message_id=notice.chargeback_id)
        return "accepted"

    async def _reverse(self, conn: Connection, chargeback: ChargebackReceived) -> Event | None:
        first_time = await self._repository.add_chargeback(
            conn,
            chargeback_id=chargeback.chargeback_id,
            payment_id=chargeback.payment_id,
            user_id=chargeback.user_id,
            occurred_at=chargeback.occurred_at,
        )
        if not first_time:
            return None  # a redelivery: its effect, if any, is already recorded
        purchase = await self._repository.reverse(
            conn, payment_id=chargeback.payment_id, user_id=chargeback.user_id
        )
        if purchase is None:
            known = await self._repository.get_by_payment_id(conn, payment_id=chargeback.payment_id)
            outcome = (
                "already_reversed" if known and known.status == "reversed" else "unknown_payment"
            )
            await self._repository.set_chargeback_outcome(
                conn, chargeback_id=chargeback.chargeback_id, outcome=outcome
            )
            return None
        await self._repository.set_chargeback_outcome(
            conn, chargeback_id=chargeback.chargeback_id, outcome="reversed"
        )
        assert purchase.payment_id is not None
        return PurchaseReversed(
            request_id=chargeback.chargeback_id,
            payment_id=purchase.payment_id,
            user_id=purchase.user_id,
            coins=purchase.coins + purchase.bonus_coins,
        )


def _outcome(charge: Charge | None) -> tuple[str, str | None]:
    """What a charge means for its purchase; None: the provider holds no charge."""
    if charge is None:
        return "failed", "provider_unavailable"
    if charge.outcome == "approved":
        return "completed", None
    return "failed", "payment_declined"
