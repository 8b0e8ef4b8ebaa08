"""Spending limits: the coins a user allows themselves per day, week or month, which
gift debits enforce (gifts.py) and the balance shows (reads.py)."""

from collections.abc import Mapping, Sequence

import asyncpg

from services.wallet import domain
from services.wallet.domain import SpendingLimits
from services.wallet.ledger import claim_requests
from shared import outbox, topics
from shared.contracts import Period, SpendingLimitRequested, SpendingLimitUpdated
from shared.db import Connection, Database
from shared.idempotency import first_of_each, refuse_if_different


class SpendingLimitService:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._repository = SpendingLimitRepository()

    async def update(self, requests: Sequence[SpendingLimitRequested]) -> None:
        """Store users' own spending limits; one `wallet.spending-limit-updated` per request.

        The inbox is keyed by request_id, so a request sent again has no second effect
        and no second answer; one reusing a request_id for another limit is dead-lettered
        as `idempotency_conflict`, and a limit beyond any coin count as `invalid_request`
        (the contract has no failure outcome for it). Within a batch one user's requests
        apply in order.
        """
        requests = first_of_each(requests, domain.limit_fingerprint)
        for request in requests:
            domain.check_limit_request(request)
        async with self._db.transaction() as conn:
            todo = await claim_requests(conn, topics.SPENDING_LIMIT_REQUESTED, requests)
            claimed = {r.request_id for r in todo}
            await self._check_repeats(conn, [r for r in requests if r.request_id not in claimed])
            await self._repository.add_limit_requests(
                conn, fingerprints={r.request_id: domain.limit_fingerprint(r) for r in todo}
            )
            await self._repository.set_spending_limits(
                conn,
                limits={(r.user_id, r.period): (r.max_coins, r.request_id) for r in todo},
            )
            await outbox.enqueue(conn, [_limit_updated(r) for r in todo])

    async def _check_repeats(
        self, conn: Connection, repeated: Sequence[SpendingLimitRequested]
    ) -> None:
        if not repeated:
            return
        known = await self._repository.get_limit_fingerprints(
            conn, request_ids=[r.request_id for r in repeated]
        )
        for request in repeated:
            if request.request_id in known:
                refuse_if_different(known[request.request_id], request, domain.limit_fingerprint)


class SpendingLimitRepository:
    """The SQL of spending limits and the requests that set them."""

    async def set_spending_limits(
        self, conn: Connection, *, limits: Mapping[tuple[str, Period], tuple[int | None, str]]
    ) -> None:
        """Set or (with None) remove limits: (user, period) -> (max coins, request id)."""
        kept = {key: value for key, value in limits.items() if value[0] is not None}
        removed = [key for key in limits if key not in kept]
        if kept:
            await self._upsert_limits(conn, kept)
        if removed:
            await conn.execute(
                """
                DELETE FROM spending_limits s
                USING unnest($1::text[], $2::text[]) AS r(user_id, period)
                WHERE s.user_id = r.user_id AND s.period = r.period
                """,
                [user for user, _ in removed],
                [period for _, period in removed],
            )

    async def _upsert_limits(
        self, conn: Connection, limits: Mapping[tuple[str, Period], tuple[int | None, str]]
    ) -> None:
        await conn.execute(
            """
            INSERT INTO spending_limits (user_id, period, max_coins, request_id)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
            ON CONFLICT (user_id, period) DO UPDATE
                SET max_coins = excluded.max_coins, request_id = excluded.request_id,
                    updated_at = now()
            """,
            [user for user, _ in limits],
            [period for _, period in limits],
            [limit for limit, _ in limits.values()],
            [request_id for _, request_id in limits.values()],
        )

    async def add_limit_requests(
        self, conn: Connection, *, fingerprints: Mapping[str, str]
    ) -> None:
        """Record what each new spending-limit request asked: request_id -> fingerprint."""
        await conn.execute(
            """
            INSERT INTO spending_limit_requests (request_id, fingerprint)
            SELECT * FROM unnest($1::text[], $2::text[])
            ON CONFLICT (request_id) DO NOTHING
            """,
            list(fingerprints),
            list(fingerprints.values()),
        )

    async def get_limit_fingerprints(
        self, conn: Connection, *, request_ids: Sequence[str]
    ) -> dict[str, str]:
        """What the spending-limit requests recorded before asked (requests handled before
        migration 0008 have no record)."""
        rows = await conn.fetch(
            "SELECT request_id, fingerprint FROM spending_limit_requests"
            " WHERE request_id = ANY($1)",
            list(request_ids),
        )
        return {row["request_id"]: row["fingerprint"] for row in rows}

    async def list_spending_limits(
        self, conn: Connection | asyncpg.Pool, *, user_ids: Sequence[str]
    ) -> dict[str, SpendingLimits]:
        """The limits of those users who have any."""
        rows = await conn.fetch(
            "SELECT user_id, period, max_coins FROM spending_limits WHERE user_id = ANY($1)",
            list(user_ids),
        )
        found: dict[str, dict[str, int]] = {}
        for row in rows:
            found.setdefault(row["user_id"], {})[row["period"]] = row["max_coins"]
        return {user: SpendingLimits(**limits) for user, limits in found.items()}

    async def get_spending_limits(
        self, conn: Connection | asyncpg.Pool, *, user_id: str
    ) -> SpendingLimits:
        """One user's limits (none set: no limit)."""
        found = await self.list_spending_limits(conn, user_ids=[user_id])
        return found.get(user_id, SpendingLimits())


def _limit_updated(request: SpendingLimitRequested) -> SpendingLimitUpdated:
    return SpendingLimitUpdated(
        request_id=request.request_id,
        user_id=request.user_id,
        period=request.period,
        max_coins=request.max_coins,
    )
