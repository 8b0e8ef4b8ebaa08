"""Every SQL statement of the payment service."""

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from services.payment.domain import Offer, Purchase
from shared.db import Connection
from shared.money import Money

_OFFERS = """
    SELECT p.package_id, p.coins, pp.currency, pp.amount_minor,
           COALESCE((SELECT max(bonus_coins) FROM promotions pr
                     WHERE pr.package_id = p.package_id
                       AND pr.starts_at <= $2 AND $2 < pr.ends_at), 0) AS bonus_coins
    FROM packages p JOIN package_prices pp USING (package_id)
    WHERE p.active AND pp.currency = ANY($1::text[])
    ORDER BY pp.currency, pp.amount_minor
"""


def _offer(row: asyncpg.Record) -> Offer:
    return Offer(
        package_id=row["package_id"],
        coins=row["coins"],
        bonus_coins=row["bonus_coins"],
        price=Money(amount_minor=row["amount_minor"], currency=row["currency"]),
    )


def _purchase(row: asyncpg.Record) -> Purchase:
    return Purchase(
        request_id=row["request_id"],
        user_id=row["user_id"],
        package_id=row["package_id"],
        price=Money(amount_minor=row["price_minor"], currency=row["currency"]),
        payment_method=row["payment_method"],
        coins=row["coins"],
        bonus_coins=row["bonus_coins"],
        status=row["status"],
        reason=row["reason"],
        payment_id=row["payment_id"],
    )


class PaymentRepository:
    async def list_offers(
        self, conn: Connection, *, currencies: Sequence[str], at: datetime
    ) -> list[Offer]:
        return [_offer(row) for row in await conn.fetch(_OFFERS, list(currencies), at)]

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
                                   requested_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                                 $6::text[], $7::int[], $8::int[], $9::text[], $10::text[],
                                 $11::timestamptz[])
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
    ) -> list[Purchase]:
        """Move pending purchases to their outcome; returns only those this call moved."""
        rows = await conn.fetch(
            """
            UPDATE purchases p
            SET status = o.status, reason = o.reason, payment_id = o.payment_id,
                updated_at = now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                 AS o(request_id, status, reason, payment_id)
            WHERE p.request_id = o.request_id AND p.status = 'pending'
            RETURNING p.*
            """,
            list(request_ids),
            list(statuses),
            list(reasons),
            list(payment_ids),
        )
        return [_purchase(row) for row in rows]
