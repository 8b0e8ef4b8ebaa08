"""Gifting use cases: the gift saga with the wallet, and the leaderboards.

1. `handle_requests` records each new gift request. One that fails a check is rejected
   at once (gifting.gift-rejected); the others are priced and the wallet is asked to pay
   (gifting.gift-debit-requested).
2. The wallet debits the sender and credits the creator in one ledger transaction, or
   refuses, and answers (wallet.gift-debit-answered).
3. `handle_answers` gives each request its one outcome (gifting.gift-sent or
   gifting.gift-rejected) and adds sent gifts to their stream's leaderboard.

Each step is one transaction with its outbox; a request's status moves from pending to
sent or rejected exactly once, so redeliveries and restarts repeat nothing.
"""

import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Histogram

from services.gifting import domain
from services.gifting.domain import Gift, GiftOrder, GiftRules
from services.gifting.repository import GiftingRepository, Settled
from shared import outbox
from shared.contracts import (
    Event,
    GiftDebitAnswered,
    GiftDebitRequested,
    GiftRejected,
    GiftRequested,
    GiftSent,
)
from shared.db import Connection, Database
from shared.faults import crash_point
from shared.idempotency import first_of_each, refuse_if_different

CATALOG_TTL_S = 1.0
"""How long gifting uses a catalog row it read before reading it again: the longest a
retired or repriced gift is still sold at its old terms after an operator's SQL."""


class GiftingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.saga = Histogram(
            "coinstream_gift_saga_seconds",
            "From a gift request's arrival to its outcome being committed, by outcome",
            ["outcome"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )


class GiftingService:
    def __init__(
        self,
        db: Database,
        repository: GiftingRepository,
        rules: GiftRules,
        metrics: GiftingMetrics,
        catalog_ttl_s: float = CATALOG_TTL_S,
    ) -> None:
        self._db = db
        self._repository = repository
        self._rules = rules
        self._metrics = metrics
        self._catalog_ttl_s = catalog_ttl_s
        # Gifts found in the catalog, with when they were read (monotonic seconds).
        self._gifts: dict[str, tuple[float, Gift]] = {}

    async def _get_gifts(self, conn: Connection, gift_ids: Sequence[str]) -> dict[str, Gift]:
        """The catalog's gifts of these ids, read at most `catalog_ttl_s` ago.

        Operators change the catalog with SQL, so a gift retired (or repriced) is refused
        (or priced anew) within `catalog_ttl_s`; only gifts found are kept, so a gift
        added to the catalog is seen at once. Saves a statement in most batches.
        """
        now = time.monotonic()
        found: dict[str, Gift] = {}
        missing = []
        for gift_id in gift_ids:
            cached = self._gifts.get(gift_id)
            if cached is not None and now - cached[0] < self._catalog_ttl_s:
                found[gift_id] = cached[1]
            else:
                missing.append(gift_id)
        if missing:
            read = await self._repository.get_gifts(conn, gift_ids=missing)
            for gift_id, gift in read.items():
                self._gifts[gift_id] = (now, gift)
            found.update(read)
        return found

    async def catalog(self) -> list[Gift]:
        return await self._repository.list_active_gifts(self._db.pool)

    async def leaderboard(self, *, stream_id: str, limit: int) -> list[tuple[str, int]]:
        return await self._repository.list_leaderboard(
            self._db.pool, stream_id=stream_id, limit=limit
        )

    async def handle_requests(self, requests: Sequence[GiftRequested]) -> None:
        """Record new gift requests: reject what fails a check, ask the wallet to pay
        for the rest. A request_id seen before has no second effect."""
        requests = first_of_each(requests, domain.fingerprint)
        async with self._db.transaction() as conn:
            gifts = await self._get_gifts(conn, sorted({r.gift_id for r in requests}))
            orders = [domain.decide(r, gifts.get(r.gift_id), self._rules) for r in requests]
            # Decided first, recorded only if new: the common case costs no lookup.
            added = await self._repository.add_new(
                conn, orders=orders, requested_at=[r.occurred_at for r in requests]
            )
            await self._check_repeats(conn, [r for r in requests if r.request_id not in added])
            await outbox.enqueue(conn, [_first_step(o) for o in orders if o.request_id in added])
            crash_point("gifting.requests.before_commit")
        crash_point("gifting.requests.after_commit")

    async def _check_repeats(self, conn: Connection, repeated: list[GiftRequested]) -> None:
        """A request_id recorded before must carry the same request (else the batch
        fails and the consumer isolates the conflicting message)."""
        if not repeated:
            return
        known = await self._repository.get_by_request_ids(
            conn, request_ids=[r.request_id for r in repeated]
        )
        for request in repeated:
            refuse_if_different(known[request.request_id].fingerprint, request, domain.fingerprint)

    async def handle_answers(self, answers: Sequence[GiftDebitAnswered]) -> None:
        """Give each paid or refused gift its one outcome, and rank sent gifts.

        An answer for a request this service never sent to the wallet, or that does not
        match it, fails the batch with a `PermanentError`: the consumer isolates and
        dead-letters it, and no request is settled by it.
        """
        async with self._db.transaction() as conn:
            outcomes = await self._outcomes(conn, answers)
            settled = await self._repository.settle_many(conn, outcomes=outcomes)
            order = {request_id: i for i, request_id in enumerate(outcomes)}
            settled.sort(key=lambda s: order[s.order.request_id])
            await self._repository.add_to_leaderboards(conn, coins=_given(settled))
            await outbox.enqueue(conn, [_outcome(s.order) for s in settled])
            crash_point("gifting.answers.before_commit")
        crash_point("gifting.answers.after_commit")
        self._observe(settled)

    async def _outcomes(
        self, conn: Connection, answers: Sequence[GiftDebitAnswered]
    ) -> dict[str, str | None]:
        """request_id -> None (sent) or the refusal, for the pending requests the answers
        settle, checked against what this service recorded."""
        orders = await self._repository.lock_by_request_ids(
            conn, request_ids=sorted({a.request_id for a in answers})
        )
        outcomes: dict[str, str | None] = {}
        for answer in answers:  # in order: a second answer sees what the first did
            order = domain.answer(orders.get(answer.request_id), answer)
            if order is not None:
                orders[order.request_id] = order
                outcomes[order.request_id] = order.reason
        return outcomes

    def _observe(self, settled: list[Settled]) -> None:
        now = datetime.now(UTC)
        for item in settled:
            self._metrics.saga.labels(item.order.status).observe(
                (now - item.received_at).total_seconds()
            )


def _given(settled: list[Settled]) -> dict[tuple[str, str], int]:
    """Coins given per (stream, sender) by the gifts sent in a live stream."""
    given: Counter[tuple[str, str]] = Counter()
    for item in settled:
        order = item.order
        if order.status == "sent" and order.stream_id is not None:
            given[(order.stream_id, order.sender_id)] += order.coins
    return dict(given)


def _first_step(order: GiftOrder) -> Event:
    """A pending request goes to the wallet; a rejected one is answered at once."""
    if order.status == "pending":
        return GiftDebitRequested(
            request_id=order.request_id,
            sender_id=order.sender_id,
            creator_id=order.creator_id,
            coins=order.coins,
            diamonds=order.diamonds,
        )
    return _outcome(order)


def _outcome(order: GiftOrder) -> Event:
    if order.status == "sent":
        return GiftSent(
            request_id=order.request_id,
            sender_id=order.sender_id,
            creator_id=order.creator_id,
            gift_id=order.gift_id,
            quantity=order.quantity,
            coins=order.coins,
            diamonds=order.diamonds,
            stream_id=order.stream_id,
            video_id=order.video_id,
        )
    assert order.reason is not None
    return GiftRejected(request_id=order.request_id, sender_id=order.sender_id, reason=order.reason)
