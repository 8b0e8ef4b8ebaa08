"""Every SQL statement of the payment service."""

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.payment.domain import Offer, Promotion, Purchase
from shared.db import Connection
from shared.money import Money

# Purchases that count against the limits: spend is money charged or being charged;
# velocity counts every attempt that reached the card network.
_ACTIVITY = """
    SELECT user_id, currency,
           coalesce(sum(price_minor) FILTER (
               WHERE created_at >= $2 AND status IN ('pending', 'completed')), 0)::bigint AS spent,
           count(*) FILTER (
               WHERE created_at >= $3 AND (status <> 'failed'
                   OR reason IN ('payment_declined', 'provider_unavailable'))) AS attempts
    FROM purchases
    WHERE user_id = ANY($1::text[]) AND created_at >= least($2, $3)
    GROUP BY user_id, currency
"""


def _purchase(row: asyncpg.Record) -> Purchase:
    return Purchase(
        request_id=row["request_id"],
        user_id=row["user_id"],
        package_id=row["package_id"],
        price=Money(amount_minor=int(row["price_minor"]), currency=row["currency"]),
        payment_method=row["payment_method"],
        coins=row["coins"],
        bonus_coins=row["bonus_coins"],
        status=row["status"],
        fingerprint=row["fingerprint"] or "",
        reason=row["reason"],
        payment_id=row["payment_id"],
    )


class PaymentRepository:
    async def list_offers(
        self, conn: Connection | asyncpg.Pool, *, currencies: Sequence[str] | None = None
    ) -> list[Offer]:
        """Active packages priced in these currencies (default: all), with promotions."""
        rows = await conn.fetch(
            """
            SELECT p.package_id, p.coins, pp.currency, pp.amount_minor
            FROM packages p JOIN package_prices pp USING (package_id)
            WHERE p.active AND ($1::text[] IS NULL OR pp.currency = ANY($1::text[]))
            ORDER BY pp.currency, pp.amount_minor
            """,
            None if currencies is None else list(currencies),
        )
        promotions = await self._promotions(conn)
        return [
            Offer(
                package_id=row["package_id"],
                coins=row["coins"],
                price=Money(amount_minor=row["amount_minor"], currency=row["currency"]),
                promotions=promotions.get(row["package_id"], ()),
            )
            for row in rows
        ]

    async def _promotions(
        self, conn: Connection | asyncpg.Pool
    ) -> dict[str, tuple[Promotion, ...]]:
        rows = await conn.fetch(
            "SELECT package_id, bonus_coins, starts_at, ends_at FROM promotions"
            " WHERE ends_at > now() - interval '1 day'"
        )
        found: dict[str, list[Promotion]] = defaultdict(list)
        for row in rows:
            found[row["package_id"]].append(
                Promotion(row["bonus_coins"], row["starts_at"], row["ends_at"])
            )
        return {package: tuple(items) for package, items in found.items()}

    async def list_activity(
        self,
        conn: Connection,
        *,
        user_ids: Sequence[str],
        day_start: datetime,
        hour_ago: datetime,
    ) -> list[tuple[str, str, int, int]]:
        """(user_id, currency, spent today in minor units, attempts in the last hour)."""
        rows = await conn.fetch(_ACTIVITY, list(user_ids), day_start, hour_ago)
        return [(r["user_id"], r["currency"], r["spent"], r["attempts"]) for r in rows]

    async def get_by_request_ids(
        self, conn: Connection, *, request_ids: Sequence[str]
    ) -> dict[str, Purchase]:
        rows = await conn.fetch(
            "SELECT * FROM purchases WHERE request_id = ANY($1::text[])", list(request_ids)
        )
        return {row["request_id"]: _purchase(row) for row in rows}

    async def get_by_request_id(
        self, conn: Connection | asyncpg.Pool, *, request_id: str
    ) -> Purchase | None:
        row = await conn.fetchrow("SELECT * FROM purchases WHERE request_id = $1", request_id)
        return _purchase(row) if row else None

    async def add_many(
        self,
        conn: Connection,
        *,
        purchases: Sequence[Purchase],
        requested_at: Sequence[datetime],
    ) -> None:
        await conn.execute(
            """
            INSERT INTO purchases (request_id, user_id, package_id, price_minor, currency,
                                   payment_method, coins, bonus_coins, status, reason,
                                   fingerprint, requested_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[],
                                 $6::text[], $7::int[], $8::int[], $9::text[], $10::text[],
                                 $11::text[], $12::timestamptz[])
            """,
            [p.request_id for p in purchases],
            [p.user_id for p in purchases],
            [p.package_id for p in purchases],
            [p.price.amount_minor for p in purchases],
            [p.price.currency for p in purchases],
            [p.payment_method for p in purchases],
            [p.coins for p in purchases],
            [p.bonus_coins for p in purchases],
            [p.status for p in purchases],
            [p.reason for p in purchases],
            [p.fingerprint for p in purchases],
            list(requested_at),
        )

    async def settle_many(
        self,
        conn: Connection,
        *,
        request_ids: Sequence[str],
        statuses: Sequence[str],
        reasons: Sequence[str | None],
        payment_ids: Sequence[str | None],
        provider_references: Sequence[str | None],
    ) -> list[Purchase]:
        """Move pending purchases to their outcome; returns only those this call moved."""
        rows = await conn.fetch(
            """
            UPDATE purchases p
            SET status = o.status, reason = o.reason, payment_id = o.payment_id,
                provider_reference = o.reference,
                charged_at = CASE WHEN o.status = 'completed' THEN now() END,
                updated_at = now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
                 AS o(request_id, status, reason, payment_id, reference)
            -- IS TRUE: by primary key, never the pending index (docs/development.md)
            WHERE p.request_id = o.request_id AND (p.status = 'pending') IS TRUE
            RETURNING p.*
            """,
            list(request_ids),
            list(statuses),
            list(reasons),
            list(payment_ids),
            list(provider_references),
        )
        return [_purchase(row) for row in rows]

    async def touch_pending(self, conn: Connection, *, request_ids: Sequence[str]) -> list[str]:
        """Mark these purchases as being charged now, if still pending; returns those.

        Reconciliation leaves a recently touched purchase alone, so a charge under way
        is never judged "not charged"; the row lock waits for a reconciliation that
        holds it, and a purchase it settled is then no longer pending."""
        rows = await conn.fetch(
            """
            UPDATE purchases SET updated_at = now()
            -- IS TRUE: by primary key, never the pending index (docs/development.md)
            WHERE request_id = ANY($1::text[]) AND (status = 'pending') IS TRUE
            RETURNING request_id
            """,
            list(request_ids),
        )
        return [row["request_id"] for row in rows]

    async def claim_in_doubt(
        self, conn: Connection, *, stale_before: datetime, limit: int
    ) -> list[Purchase]:
        """Pending purchases untouched since `stale_before` (their charge outcome is
        unknown), locked for this transaction; other replicas skip them."""
        rows = await conn.fetch(
            """
            SELECT * FROM purchases WHERE status = 'pending' AND updated_at < $1
            ORDER BY updated_at LIMIT $2
            FOR UPDATE SKIP LOCKED
            """,
            stale_before,
            limit,
        )
        return [_purchase(row) for row in rows]

    async def count_in_doubt(
        self, conn: Connection | asyncpg.Pool, *, stale_before: datetime
    ) -> int:
        """Purchases pending since before `stale_before`: in doubt, looked up or not."""
        count = await conn.fetchval(
            "SELECT count(*) FROM purchases WHERE status = 'pending' AND created_at < $1",
            stale_before,
        )
        return int(count)

    async def add_chargeback(
        self,
        conn: Connection,
        *,
        chargeback_id: str,
        payment_id: str,
        user_id: str,
        occurred_at: datetime,
    ) -> bool:
        """Record a chargeback once; False when this chargeback_id was seen before."""
        status = await conn.execute(
            """
            INSERT INTO chargebacks (chargeback_id, payment_id, user_id, outcome, occurred_at)
            VALUES ($1, $2, $3, 'unknown_payment', $4)
            ON CONFLICT (chargeback_id) DO NOTHING
            """,
            chargeback_id,
            payment_id,
            user_id,
            occurred_at,
        )
        return bool(status == "INSERT 0 1")

    async def set_chargeback_outcome(
        self, conn: Connection, *, chargeback_id: str, outcome: str
    ) -> None:
        await conn.execute(
            "UPDATE chargebacks SET outcome = $2 WHERE chargeback_id = $1", chargeback_id, outcome
        )

    async def reverse(self, conn: Connection, *, payment_id: str, user_id: str) -> Purchase | None:
        """Mark a completed purchase reversed; None when there is none to reverse."""
        row = await conn.fetchrow(
            """
            UPDATE purchases SET status = 'reversed', updated_at = now()
            WHERE payment_id = $1 AND user_id = $2 AND status = 'completed'
            RETURNING *
            """,
            payment_id,
            user_id,
        )
        return _purchase(row) if row else None

    async def get_by_payment_id(self, conn: Connection, *, payment_id: str) -> Purchase | None:
        row = await conn.fetchrow("SELECT * FROM purchases WHERE payment_id = $1", payment_id)
        return _purchase(row) if row else None

    async def add_webhook_notice(
        self,
        conn: Connection,
        *,
        chargeback_id: str,
        payment_id: str,
        user_id: str,
        occurred_at: datetime,
    ) -> bool:
        """Record a webhook's chargeback notice once; False when its chargeback_id was
        recorded before (a concurrent twin waits here for the first one's commit)."""
        status = await conn.execute(
            """
            INSERT INTO webhook_notices (chargeback_id, payment_id, user_id, occurred_at)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (chargeback_id) DO NOTHING
            """,
            chargeback_id,
            payment_id,
            user_id,
            occurred_at,
        )
        return bool(status == "INSERT 0 1")

    async def get_webhook_notice(
        self, conn: Connection, *, chargeback_id: str
    ) -> tuple[str, str] | None:
        """(payment_id, user_id) of the notice recorded with this chargeback_id."""
        row = await conn.fetchrow(
            "SELECT payment_id, user_id FROM webhook_notices WHERE chargeback_id = $1",
            chargeback_id,
        )
        return (row["payment_id"], row["user_id"]) if row else None
