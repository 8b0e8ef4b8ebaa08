"""Purchases: bought coins credited once per payment, and taken back (even below zero,
which freezes spending) when the payment is reversed after a chargeback."""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from services.wallet import domain
from services.wallet.domain import AccountKind, AccountRef, Draft, Entry, Posting, TxKind
from services.wallet.ledger import Applied, Bookkeeper, Locked
from shared import inbox, outbox, topics
from shared.contracts import (
    CoinsClawedBack,
    CoinsCredited,
    Event,
    PurchaseCompleted,
    PurchaseReversed,
)
from shared.db import Connection, Database
from shared.faults import crash_point

log = logging.getLogger(__name__)

M = TypeVar("M")


@dataclass(frozen=True)
class PendingClawback:
    """A reversal that arrived before the credit it reverses."""

    payment_id: str
    user_id: str
    request_id: str
    coins: int


class PurchaseService:
    def __init__(self, db: Database, books: Bookkeeper) -> None:
        self._db = db
        self._books = books
        self._repository = PurchaseRepository()

    async def credit(self, events: Sequence[PurchaseCompleted]) -> None:
        """Credit bought coins once per payment, and publish `wallet.coins-credited`.

        Two guards, both in the batch's one transaction: the inbox skips an event seen
        before (a redelivery), the ledger's idempotency key skips a payment already
        credited under another event id. A reversal that came first is applied right
        after its credit, in the same transaction (`wallet.coins-clawed-back`).
        """
        crash_point("wallet.credit.received")
        # Built before anything is written: one nonsensical event fails the batch at
        # once, and the consumer isolates it by halving.
        drafts = {e.event_id: domain.purchase_credit(e, shard=self._books.shard(e)) for e in events}
        async with self._db.transaction() as conn:
            fresh = await inbox.claim_many(
                conn, topic=topics.PURCHASE_COMPLETED, message_ids=list(drafts)
            )
            todo = await self._books.not_applied(conn, [drafts[i] for i in drafts if i in fresh])
            events_of = {drafts[e.event_id].idempotency_key: e for e in events}
            await outbox.enqueue(conn, await self._credit(conn, todo, events_of))
            crash_point("wallet.credit.before_commit")
        crash_point("wallet.credit.after_commit")

    async def _credit(
        self, conn: Connection, credits: list[Draft], events_of: dict[str, PurchaseCompleted]
    ) -> list[Event]:
        """Post credits, then the clawbacks that waited for them; return their events."""
        if not credits:
            return []
        # The users' accounts are locked before pending reversals are read, and a
        # reversal locks them before it looks for its credit: whichever of the two
        # transactions commits second sees the other's rows, so none is missed.
        locked = await self._books.lock(conn, {ref for draft in credits for ref in draft.accounts})
        credit_of = {_payment_id(draft): draft for draft in credits}
        pending = await self._repository.take_pending_clawbacks(conn, payment_ids=list(credit_of))
        clawbacks = [
            domain.clawback(
                payment_id=p.payment_id,
                request_id=p.request_id,
                credit=credit_of[p.payment_id].postings,
                shard=self._books.shard(events_of[domain.purchase_key(p.payment_id)]),
            )
            for p in pending
        ]
        applied = await self._books.post(conn, credits + clawbacks, locked)
        waited = {domain.clawback_key(p.payment_id): p for p in pending}
        return [
            _credited(events_of[d.idempotency_key], entries)
            if d.kind is TxKind.PURCHASE
            else _clawed_back(waited[d.idempotency_key], d, entries)
            for d, entries in applied
        ]

    async def claw_back(self, events: Sequence[PurchaseReversed]) -> None:
        """Take a reversed purchase's coins back, once per payment, even below zero.

        A reversal whose credit has not arrived yet is recorded as pending and applied
        when the credit lands. Publishes `wallet.coins-clawed-back` when applied.
        """
        for event in events:
            domain.check_reversal(event)
        async with self._db.transaction() as conn:
            fresh = await inbox.claim_many(
                conn, topic=topics.PURCHASE_REVERSED, message_ids=[e.event_id for e in events]
            )
            reversals = _first_of_each((e for e in events if e.event_id in fresh), _payment_of)
            if reversals:
                applied = await self._reverse(conn, reversals)
                await outbox.enqueue(
                    conn,
                    [_clawed_back(reversals[_payment_id(d)], d, entries) for d, entries in applied],
                )
            crash_point("wallet.clawback.before_commit")

    async def _reverse(self, conn: Connection, reversals: dict[str, PurchaseReversed]) -> Applied:
        locked = await self._lock_for_reversals(conn, reversals)
        credits = await self._repository.get_postings(
            conn, keys=[domain.purchase_key(p) for p in reversals]
        )
        for reversal in reversals.values():
            if domain.purchase_key(reversal.payment_id) in credits:
                domain.check_reversal_of(
                    reversal, credits[domain.purchase_key(reversal.payment_id)]
                )
        await self._repository.add_pending_clawbacks(
            conn,
            clawbacks=[
                PendingClawback(r.payment_id, r.user_id, r.request_id, r.coins)
                for r in reversals.values()
                if domain.purchase_key(r.payment_id) not in credits
            ],
        )
        drafts = [
            domain.clawback(
                payment_id=r.payment_id,
                request_id=r.request_id,
                credit=credits[domain.purchase_key(r.payment_id)],
                shard=self._books.shard(r),
            )
            for r in reversals.values()
            if domain.purchase_key(r.payment_id) in credits
        ]
        return await self._books.post(conn, await self._books.not_applied(conn, drafts), locked)

    async def _lock_for_reversals(
        self, conn: Connection, reversals: dict[str, PurchaseReversed]
    ) -> Locked:
        # Lock first (see _credit): the users' coins and the issuance accounts (of the
        # reversals' shards) a clawback returns coins to, in one go so the id order holds.
        shards = {self._books.shard(r) for r in reversals.values()}
        issuance = (AccountKind.COIN_ISSUANCE, AccountKind.BONUS_ISSUANCE)
        return await self._books.lock(
            conn,
            {domain.coins(r.user_id) for r in reversals.values()}
            | {domain.platform(kind, shard) for shard in shards for kind in issuance},
        )


class PurchaseRepository:
    """The SQL only purchases use: credits read back, reversals waiting for them."""

    async def get_postings(
        self, conn: Connection, *, keys: Sequence[str]
    ) -> dict[str, list[Posting]]:
        """The postings of applied transactions, by idempotency key, in entry order."""
        rows = await conn.fetch(
            """
            SELECT t.idempotency_key, a.owner_id, a.kind, e.amount,
                   c.owner_id AS counter_owner, c.kind AS counter_kind
            FROM ledger_transactions t
            JOIN ledger_entries e ON e.tx_id = t.tx_id
            JOIN accounts a ON a.account_id = e.account_id
            LEFT JOIN accounts c ON c.account_id = e.counter_account_id
            WHERE t.idempotency_key = ANY($1::text[])
            ORDER BY e.entry_id
            """,
            list(keys),
        )
        postings: dict[str, list[Posting]] = {}
        for row in rows:
            counter = (
                AccountRef(row["counter_owner"], AccountKind(row["counter_kind"]))
                if row["counter_kind"]
                else None
            )
            account = AccountRef(row["owner_id"], AccountKind(row["kind"]))
            postings.setdefault(row["idempotency_key"], []).append(
                Posting(account, row["amount"], counter)
            )
        return postings

    async def add_pending_clawbacks(
        self, conn: Connection, *, clawbacks: Sequence[PendingClawback]
    ) -> None:
        """Record reversals whose credit has not arrived (a second one for a payment is a no-op)."""
        if not clawbacks:
            return
        await conn.execute(
            """
            INSERT INTO pending_clawbacks (payment_id, user_id, request_id, coins)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
            ON CONFLICT (payment_id) DO NOTHING
            """,
            [c.payment_id for c in clawbacks],
            [c.user_id for c in clawbacks],
            [c.request_id for c in clawbacks],
            [c.coins for c in clawbacks],
        )

    async def take_pending_clawbacks(
        self, conn: Connection, *, payment_ids: Sequence[str]
    ) -> list[PendingClawback]:
        """Remove and return the reversals waiting for these payments' credits."""
        rows = await conn.fetch(
            """
            DELETE FROM pending_clawbacks WHERE payment_id = ANY($1::text[])
            RETURNING payment_id, user_id, request_id, coins
            """,
            list(payment_ids),
        )
        return [PendingClawback(**dict(row)) for row in rows]


def _payment_id(draft: Draft) -> str:
    """Purchase credits and clawbacks are keyed `<kind>:<payment_id>`."""
    return draft.idempotency_key.split(":", 1)[1]


def _first_of_each(messages: Iterable[M], key: Callable[[M], str]) -> dict[str, M]:
    """The first message of each key, in order (a second one is a duplicate)."""
    first: dict[str, M] = {}
    for message in messages:
        first.setdefault(key(message), message)
    return first


def _payment_of(event: PurchaseReversed) -> str:
    return event.payment_id


def _credited(event: PurchaseCompleted, entries: list[Entry]) -> CoinsCredited:
    amount, balance_after = domain.user_total(entries, domain.coins(event.user_id))
    return CoinsCredited(
        request_id=event.request_id,
        user_id=event.user_id,
        amount=amount,
        balance_after=balance_after,
        payment_id=event.payment_id,
        coins=event.coins,
        bonus_coins=event.bonus_coins,
    )


def _clawed_back(
    reversal: PurchaseReversed | PendingClawback, draft: Draft, entries: list[Entry]
) -> CoinsClawedBack:
    # The ledger is the truth: the user and amount are the credit's, mirrored.
    user = domain.user_coins_of(draft)
    amount, balance_after = domain.user_total(entries, user)
    if reversal.user_id != user.owner_id or reversal.coins != -amount:
        log.warning(
            "reversal of %s says user %s, %d coins; the credit was %s, %d coins",
            reversal.payment_id,
            reversal.user_id,
            reversal.coins,
            user.owner_id,
            -amount,
        )
    return CoinsClawedBack(
        request_id=reversal.request_id,
        user_id=user.owner_id,
        amount=-amount,
        balance_after=balance_after,
        payment_id=reversal.payment_id,
    )
