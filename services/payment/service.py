"""Recharge use cases: record a request, charge it, publish its one outcome."""

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from services.payment import domain
from services.payment.domain import Offer, Purchase
from services.payment.provider import CardProvider, Charge
from services.payment.repository import PaymentRepository
from shared import outbox
from shared.contracts import Event, PurchaseCompleted, PurchaseFailed, PurchaseRequested
from shared.db import Connection, Database


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
    def __init__(self, db: Database, repository: PaymentRepository, provider: CardProvider) -> None:
        self._db = db
        self._repository = repository
        self._provider = provider

    async def offers(self, *, currency: str) -> list[Offer]:
        async with self._db.pool.acquire() as conn:
            return await self._repository.list_offers(
                conn, currencies=[currency], at=datetime.now(UTC)
            )

    async def purchase(self, *, request_id: str) -> Purchase | None:
        return await self._repository.get_by_request_id(self._db.pool, request_id=request_id)

    async def handle_requests(self, requests: Sequence[PurchaseRequested]) -> None:
        """Record new requests (refusing what fails a check), charge the rest, settle them.

        The request_id is the idempotency key: a repeated request finds its purchase and
        has no second effect; one still pending (a crash mid-charge) is charged again
        with the same key, which the provider answers with the first result.
        """
        first_seen: dict[str, PurchaseRequested] = {}
        for request in requests:
            first_seen.setdefault(request.request_id, request)
        pending = await self._record(list(first_seen.values()))
        if pending:
            charges = await asyncio.gather(*(self._charge(purchase) for purchase in pending))
            await self._settle(pending, charges)

    async def _record(self, requests: Sequence[PurchaseRequested]) -> list[Purchase]:
        async with self._db.transaction() as conn:
            known = await self._repository.get_by_request_ids(
                conn, request_ids=[r.request_id for r in requests]
            )
            new = [r for r in requests if r.request_id not in known]
            offers = await self._offers_for(conn, new)
            decided = [domain.decide(r, offers.get((r.package_id, r.price.currency))) for r in new]
            await self._repository.add_many(
                conn, purchases=decided, requested_at=[r.occurred_at for r in new]
            )
            await outbox.enqueue(conn, [_outcome_event(p) for p in decided if p.status == "failed"])
        # In request order, so one user's outcomes are published in the order asked.
        purchases = {p.request_id: p for p in [*known.values(), *decided]}
        return [
            purchases[r.request_id] for r in requests if purchases[r.request_id].status == "pending"
        ]

    async def _offers_for(
        self, conn: Connection, requests: Sequence[PurchaseRequested]
    ) -> dict[tuple[str, str], Offer]:
        currencies = sorted({r.price.currency for r in requests})
        if not currencies:
            return {}
        offers = await self._repository.list_offers(
            conn,
            currencies=currencies,
            at=datetime.now(UTC),
        )
        return {(o.package_id, o.price.currency): o for o in offers}

    async def _charge(self, purchase: Purchase) -> Charge:
        return await self._provider.charge(
            idempotency_key=purchase.request_id,
            method=purchase.payment_method,
            amount=purchase.price,
        )

    async def _settle(self, pending: Sequence[Purchase], charges: Sequence[Charge]) -> None:
        approved = [c.outcome == "approved" for c in charges]
        async with self._db.transaction() as conn:
            settled = await self._repository.settle_many(
                conn,
                request_ids=[p.request_id for p in pending],
                statuses=["completed" if ok else "failed" for ok in approved],
                reasons=[None if ok else "payment_declined" for ok in approved],
                payment_ids=[f"pay_{uuid.uuid4().hex}" if ok else None for ok in approved],
            )
            order = {p.request_id: i for i, p in enumerate(pending)}
            settled.sort(key=lambda p: order[p.request_id])
            await outbox.enqueue(conn, [_outcome_event(p) for p in settled])
