"""Gift debits, the wallet's step of the gift saga: debit the sender's coins and credit
the creator's diamonds at once, within the sender's spending limits, or refuse."""

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime

from services.wallet import domain
from services.wallet.domain import AccountKind, Draft, Entry, Ledger, SpendingLimits, Spent
from services.wallet.errors import InvalidGiftDebitError
from services.wallet.ledger import Applied, Bookkeeper, claim_requests, ledger_of
from services.wallet.limits import SpendingLimitRepository
from shared import outbox, topics
from shared.contracts import (
    CoinsDebited,
    DiamondsCredited,
    Event,
    GiftDebitAnswered,
    GiftDebitRefusal,
    GiftDebitRequested,
    utc_now,
)
from shared.db import Connection, Database
from shared.faults import crash_point
from shared.logs import record_fields

log = logging.getLogger(__name__)


class GiftDebitService:
    def __init__(
        self,
        db: Database,
        books: Bookkeeper,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._db = db
        self._books = books
        self._clock = clock  # decides which UTC day, week and month a gift counts in
        self._repository = GiftRepository()
        self._limits = SpendingLimitRepository()

    async def debit(self, requests: Sequence[GiftDebitRequested]) -> None:
        """Pay for gifts: debit each sender, credit each creator, or refuse; answer once.

        Gifting asks (gifting.gift-debit-requested); the answer, wallet.gift-debit-answered,
        goes back to it. A debit publishes `wallet.coins-debited` and
        `wallet.diamonds-credited` too. The inbox is keyed by request_id, so a gift is
        decided once, whatever is redelivered. One sender's requests apply in order
        against one running balance, so concurrent gifts can never overspend.
        """
        async with self._db.transaction() as conn:
            todo = await claim_requests(conn, topics.GIFT_DEBIT_REQUESTED, requests)
            if todo:
                await outbox.enqueue(conn, await self._pay_for_gifts(conn, todo))
            crash_point("wallet.gift.before_commit")
        crash_point("wallet.gift.after_commit")

    async def _pay_for_gifts(
        self, conn: Connection, requests: list[GiftDebitRequested]
    ) -> list[Event]:
        drafts = _gift_drafts(requests, self._books.shard)
        senders = {domain.coins(r.sender_id) for r in requests}
        locked = await self._books.lock(
            conn, senders | {ref for d in drafts.values() for ref in d.accounts}
        )
        now = self._clock()
        limits = await self._limits.list_spending_limits(
            conn, user_ids=sorted({r.sender_id for r in requests})
        )
        spent = await self._repository.list_spent(
            conn,
            user_ids=sorted(limits),
            **{p: domain.period_start(p, now).date() for p in domain.PERIODS},
        )
        ledger = ledger_of(locked)
        applied: Applied = []
        answers: list[Event] = []
        debited: Counter[str] = Counter()  # coins per sender
        for request in requests:
            refusal = _refusal(request, drafts, ledger, limits, spent)
            if refusal is not None:
                answers.append(_answer(request, refusal))
                continue
            entries = ledger.apply(drafts[request.request_id])
            applied.append((drafts[request.request_id], entries))
            debited[request.sender_id] += request.coins
            if request.sender_id in limits:
                spent[request.sender_id] = spent.get(request.sender_id, Spent()).plus(request.coins)
            answers.append(_answer(request, None, entries))
        await self._books.write(conn, applied, locked, ledger)
        await self._repository.add_spent(conn, day=now.date(), coins=debited)
        # Answers first: the relay publishes in order, and gifting waits for them.
        return answers + [
            event for draft, entries in applied for event in _gift_events(draft, entries)
        ]


class GiftRepository:
    """The SQL only gift debits use: the coins each user spent per day."""

    async def list_spent(
        self, conn: Connection, *, user_ids: Sequence[str], day: date, week: date, month: date
    ) -> dict[str, Spent]:
        """Coins each user spent since the start of the day, the week and the month."""
        if not user_ids:
            return {}
        rows = await conn.fetch(
            """
            SELECT user_id,
                   coalesce(sum(coins) FILTER (WHERE day >= $2), 0)::bigint AS day,
                   coalesce(sum(coins) FILTER (WHERE day >= $3), 0)::bigint AS week,
                   coalesce(sum(coins) FILTER (WHERE day >= $4), 0)::bigint AS month
            FROM daily_spending
            WHERE user_id = ANY($1) AND day >= least($3, $4)
            GROUP BY user_id
            """,
            list(user_ids),
            day,
            week,
            month,
        )
        return {row["user_id"]: Spent(row["day"], row["week"], row["month"]) for row in rows}

    async def add_spent(self, conn: Connection, *, day: date, coins: Mapping[str, int]) -> None:
        """Add coins spent today, per user (in user order: writers never deadlock)."""
        if not coins:
            return
        users = sorted(coins)
        await conn.execute(
            """
            INSERT INTO daily_spending (user_id, day, coins)
            SELECT user_id, $3, coins FROM unnest($1::text[], $2::bigint[]) AS s(user_id, coins)
            ON CONFLICT (user_id, day) DO UPDATE
                SET coins = daily_spending.coins + excluded.coins
            """,
            users,
            [coins[user] for user in users],
            day,
        )


def _gift_drafts(
    requests: Iterable[GiftDebitRequested], shard: Callable[[GiftDebitRequested], int]
) -> dict[str, Draft]:
    """The ledger transaction of each request that makes sense (the rest are refused)."""
    drafts = {}
    for request in requests:
        try:
            drafts[request.request_id] = domain.gift_debit(request, shard=shard(request))
        except InvalidGiftDebitError:
            log.exception(
                "refusing gift debit %s",
                request.request_id,
                extra=record_fields(request_id=request.request_id),
            )
    return drafts


def _refusal(
    request: GiftDebitRequested,
    drafts: dict[str, Draft],
    ledger: Ledger,
    limits: dict[str, SpendingLimits],
    spent: dict[str, Spent],
) -> GiftDebitRefusal | None:
    if request.request_id not in drafts:
        return "invalid_request"
    return domain.gift_refusal(
        ledger.state(domain.coins(request.sender_id)),
        request.coins,
        limits.get(request.sender_id, SpendingLimits()),
        spent.get(request.sender_id, Spent()),
    )


def _answer(
    request: GiftDebitRequested, refusal: GiftDebitRefusal | None, entries: Iterable[Entry] = ()
) -> GiftDebitAnswered:
    """Refused with a reason, or debited (with the sender's coins after, from `entries`)."""
    balance_after = None
    if refusal is None:
        _, balance_after = domain.user_total(entries, domain.coins(request.sender_id))
    return GiftDebitAnswered(
        request_id=request.request_id,
        sender_id=request.sender_id,
        creator_id=request.creator_id,
        debited=refusal is None,
        reason=refusal,
        balance_after=balance_after,
        coins=request.coins,
    )


def _gift_events(draft: Draft, entries: list[Entry]) -> list[Event]:
    """`wallet.coins-debited` for the sender, `wallet.diamonds-credited` for the creator."""
    sender = domain.user_coins_of(draft)
    amount, balance_after = domain.user_total(entries, sender)
    events: list[Event] = [
        CoinsDebited(
            request_id=draft.request_id,
            user_id=sender.owner_id,
            amount=-amount,
            balance_after=balance_after,
        )
    ]
    creator = next(
        (e.account for e in entries if e.account.kind is AccountKind.USER_DIAMONDS), None
    )
    if creator is not None:
        units, units_after = domain.user_total(entries, creator)
        events.append(
            DiamondsCredited(
                request_id=draft.request_id,
                user_id=creator.owner_id,
                amount=domain.diamonds_of(units),
                balance_after=domain.diamonds_of(units_after),
            )
        )
    return events
