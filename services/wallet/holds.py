"""Payout holds, the wallet's steps of the payout saga: reserve a creator's diamonds
before payout calls its provider, then post them to payout clearing when the payout was
paid, or release them when it failed."""

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

from services.wallet import domain
from services.wallet.domain import Hold
from services.wallet.errors import InvalidHoldError
from services.wallet.ledger import Applied, Bookkeeper, claim_requests, ledger_of
from shared import outbox, topics
from shared.contracts import (
    DiamondsHoldAnswered,
    DiamondsHoldRequested,
    Event,
    PayoutCompleted,
    PayoutFailed,
)
from shared.db import Connection, Database
from shared.faults import crash_point
from shared.logs import record_fields

log = logging.getLogger(__name__)


class PayoutHoldService:
    def __init__(self, db: Database, books: Bookkeeper) -> None:
        self._db = db
        self._books = books
        self._repository = HoldRepository()

    async def place(self, requests: Sequence[DiamondsHoldRequested]) -> None:
        """Reserve creators' diamonds for payouts, or refuse; answer once per request.

        Payout asks (payout.diamonds-hold-requested) before calling its provider; the
        answer, wallet.diamonds-hold-answered, goes back to it. Diamonds on hold are not
        available, so two payouts can never both reserve the same diamonds: one
        creator's requests apply in order against one running balance.
        """
        async with self._db.transaction() as conn:
            todo = await claim_requests(conn, topics.DIAMONDS_HOLD_REQUESTED, requests)
            if todo:
                await outbox.enqueue(conn, await self._reserve(conn, todo))
            crash_point("wallet.hold.before_commit")

    async def _reserve(
        self, conn: Connection, requests: list[DiamondsHoldRequested]
    ) -> list[Event]:
        locked = await self._books.lock(
            conn,
            {
                ref
                for r in requests
                for ref in (domain.diamonds(r.creator_id), domain.hold_of(r.creator_id))
            },
        )
        ledger = ledger_of(locked)
        applied: Applied = []
        holds: list[Hold] = []
        answers: list[Event] = []
        for request in requests:
            try:
                draft = domain.diamond_hold(request)
            except InvalidHoldError:
                log.exception(
                    "refusing hold %s",
                    request.request_id,
                    extra=record_fields(request_id=request.request_id),
                )
                answers.append(_hold_answer(request, "invalid_request"))
                continue
            units = request.diamonds * domain.DIAMOND_UNITS
            if ledger.balance(domain.diamonds(request.creator_id)) < units:
                answers.append(_hold_answer(request, "insufficient_diamonds"))
                continue
            applied.append((draft, ledger.apply(draft)))
            holds.append(
                Hold(
                    request.request_id,
                    request.payout_id,
                    request.creator_id,
                    units,
                    request.deadline,
                )
            )
            answers.append(_hold_answer(request, None))
        await self._books.write(conn, applied, locked, ledger)
        await self._repository.add_holds(conn, holds=holds)
        return answers

    async def close(self, payouts: Sequence[PayoutCompleted | PayoutFailed]) -> None:
        """The second phase of a payout: post its hold when it was paid
        (payout.payout-completed), void it when it failed (payout.payout-failed).

        A hold moves from open to posted or voided once, so a redelivery does nothing;
        a payout refused before any hold (not verified, below the minimum) has none.
        An outcome that does not match the hold it names fails the batch with a
        `PermanentError`: the consumer isolates and dead-letters it, the hold stays.
        """
        async with self._db.transaction() as conn:
            holds = await self._repository.lock_holds(
                conn, request_ids=sorted({p.request_id for p in payouts})
            )
            closed: list[tuple[Hold, int]] = []  # with the shard of the outcome that closes it
            for payout in payouts:  # in order: a second outcome sees what the first did
                hold = domain.settle_hold(holds.get(payout.request_id), payout)
                if hold is not None:
                    holds[hold.request_id] = hold
                    closed.append((hold, self._books.shard(payout)))
            await self._repository.close_holds(
                conn, paid={h.request_id: h.status == "posted" for h, _ in closed}
            )
            drafts = [
                domain.close_hold(
                    request_id=hold.request_id,
                    creator_id=hold.creator_id,
                    units=hold.units,
                    paid=hold.status == "posted",
                    shard=shard,
                )
                for hold, shard in closed
            ]
            await self._books.post(conn, drafts)
            crash_point("wallet.hold_close.before_commit")


class HoldRepository:
    """The SQL of payout holds."""

    async def add_holds(self, conn: Connection, *, holds: Sequence[Hold]) -> None:
        if not holds:
            return
        await conn.execute(
            """
            INSERT INTO holds (request_id, payout_id, creator_id, units, status, deadline)
            SELECT r, p, c, u, 'open', d
            FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[])
                 AS h(r, p, c, u, d)
            """,
            [h.request_id for h in holds],
            [h.payout_id for h in holds],
            [h.creator_id for h in holds],
            [h.units for h in holds],
            [h.deadline for h in holds],
        )

    async def lock_holds(self, conn: Connection, *, request_ids: Sequence[str]) -> dict[str, Hold]:
        """The holds of these payout requests, locked (in key order) until the transaction
        ends, so a hold is checked and closed by one transaction at a time."""
        rows = await conn.fetch(
            """
            SELECT request_id, payout_id, creator_id, units, deadline, status FROM holds
            WHERE request_id = ANY($1::text[]) ORDER BY request_id FOR UPDATE
            """,
            list(request_ids),
        )
        return {
            r["request_id"]: Hold(
                r["request_id"],
                r["payout_id"],
                r["creator_id"],
                r["units"],
                r["deadline"],
                r["status"],
            )
            for r in rows
        }

    async def close_holds(
        self, conn: Connection, *, paid: Mapping[str, bool]
    ) -> list[tuple[Hold, bool]]:
        """Close open holds: request_id -> paid (posted) or not (voided). A hold already
        closed, or none at all (a payout refused before its hold), is left out."""
        rows = await conn.fetch(
            """
            UPDATE holds h
            SET status = CASE WHEN c.paid THEN 'posted' ELSE 'voided' END,
                closed_at = now()
            FROM unnest($1::text[], $2::boolean[]) AS c(request_id, paid)
            -- IS TRUE: by primary key, never the open index (docs/development.md)
            WHERE h.request_id = c.request_id AND (h.status = 'open') IS TRUE
            RETURNING h.request_id, h.payout_id, h.creator_id, h.units, h.deadline, c.paid
            """,
            list(paid),
            list(paid.values()),
        )
        return [
            (
                Hold(r["request_id"], r["payout_id"], r["creator_id"], r["units"], r["deadline"]),
                r["paid"],
            )
            for r in rows
        ]


def _hold_answer(
    request: DiamondsHoldRequested,
    refusal: Literal["insufficient_diamonds", "invalid_request"] | None,
) -> DiamondsHoldAnswered:
    return DiamondsHoldAnswered(
        request_id=request.request_id,
        payout_id=request.payout_id,
        creator_id=request.creator_id,
        held=refusal is None,
        reason=refusal,
        diamonds=request.diamonds,
    )
