"""Wallet use cases: apply ledger transactions exactly once and report them."""

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, TypeVar

from services.wallet import domain
from services.wallet.domain import (
    AccountKind,
    AccountRef,
    AccountState,
    Draft,
    Entry,
    Hold,
    Ledger,
    SpendingLimits,
    Spent,
    TxKind,
)
from services.wallet.errors import InvalidGiftDebitError, InvalidHoldError
from services.wallet.repository import (
    HistoryItem,
    LockedAccount,
    PendingClawback,
    WalletRepository,
)
from shared import inbox, outbox, topics
from shared.contracts import (
    CoinsClawedBack,
    CoinsCredited,
    CoinsDebited,
    DiamondsCredited,
    DiamondsHoldAnswered,
    DiamondsHoldRequested,
    Event,
    GiftDebitAnswered,
    GiftDebitRefusal,
    GiftDebitRequested,
    Message,
    PayoutCompleted,
    PayoutFailed,
    PurchaseCompleted,
    PurchaseReversed,
    SpendingLimitRequested,
    SpendingLimitUpdated,
    utc_now,
)
from shared.db import Connection, Database
from shared.faults import crash_point
from shared.idempotency import first_of_each, refuse_if_different

log = logging.getLogger(__name__)

M = TypeVar("M")

Applied = list[tuple[Draft, list[Entry]]]


@dataclass(frozen=True)
class Balance:
    user_id: str
    coins: int
    diamonds: Decimal
    diamonds_on_hold: Decimal
    frozen: bool
    spending_limits: SpendingLimits


class WalletService:
    def __init__(
        self,
        db: Database,
        repository: WalletRepository,
        clock: Callable[[], datetime] = utc_now,
        *,
        shards: int,
    ) -> None:
        self._db = db
        self._repository = repository
        self._clock = clock  # decides which UTC day, week and month a gift counts in
        # The partitions of the wallet's input topics (TOPIC_PARTITIONS): a transaction
        # books the platform's side in the shard of its message's partition.
        self._shards = shards

    def _shard(self, message: Message) -> int:
        """The platform shard of the partition `message` was published to (by its key)."""
        return domain.shard_of(message.key(), self._shards)

    async def credit_purchases(self, events: Sequence[PurchaseCompleted]) -> None:
        """Credit bought coins once per payment, and publish `wallet.coins-credited`.

        Two guards, both in the batch's one transaction: the inbox skips an event seen
        before (a redelivery), the ledger's idempotency key skips a payment already
        credited under another event id. A reversal that came first is applied right
        after its credit, in the same transaction (`wallet.coins-clawed-back`).
        """
        crash_point("wallet.credit.received")
        # Built before anything is written: one nonsensical event fails the batch at
        # once, and the consumer isolates it by halving.
        drafts = {e.event_id: domain.purchase_credit(e, shard=self._shard(e)) for e in events}
        async with self._db.transaction() as conn:
            fresh = await inbox.claim_many(
                conn, topic=topics.PURCHASE_COMPLETED, message_ids=list(drafts)
            )
            todo = await self._not_applied(conn, [drafts[i] for i in drafts if i in fresh])
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
        locked = await self._repository.lock_accounts(
            conn, accounts={ref for draft in credits for ref in draft.accounts}
        )
        credit_of = {_payment_id(draft): draft for draft in credits}
        pending = await self._repository.take_pending_clawbacks(conn, payment_ids=list(credit_of))
        clawbacks = [
            domain.clawback(
                payment_id=p.payment_id,
                request_id=p.request_id,
                credit=credit_of[p.payment_id].postings,
                shard=self._shard(events_of[domain.purchase_key(p.payment_id)]),
            )
            for p in pending
        ]
        applied = await self._post(conn, credits + clawbacks, locked)
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
        # Lock first (see _credit): the users' coins and the issuance accounts (of the
        # reversals' shards) a clawback returns coins to, in one go so the id order holds.
        shards = {payment: self._shard(r) for payment, r in reversals.items()}
        issuance = (AccountKind.COIN_ISSUANCE, AccountKind.BONUS_ISSUANCE)
        locked = await self._repository.lock_accounts(
            conn,
            accounts={domain.coins(r.user_id) for r in reversals.values()}
            | {domain.platform(kind, shard) for shard in set(shards.values()) for kind in issuance},
        )
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
                shard=shards[r.payment_id],
            )
            for r in reversals.values()
            if domain.purchase_key(r.payment_id) in credits
        ]
        return await self._post(conn, await self._not_applied(conn, drafts), locked)

    async def set_spending_limits(self, requests: Sequence[SpendingLimitRequested]) -> None:
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
            todo = await _new_requests(conn, topics.SPENDING_LIMIT_REQUESTED, requests)
            claimed = {r.request_id for r in todo}
            await self._check_limit_repeats(
                conn, [r for r in requests if r.request_id not in claimed]
            )
            await self._repository.add_limit_requests(
                conn, fingerprints={r.request_id: domain.limit_fingerprint(r) for r in todo}
            )
            await self._repository.set_spending_limits(
                conn,
                limits={(r.user_id, r.period): (r.max_coins, r.request_id) for r in todo},
            )
            await outbox.enqueue(conn, [_limit_updated(r) for r in todo])

    async def _check_limit_repeats(
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

    async def debit_gifts(self, requests: Sequence[GiftDebitRequested]) -> None:
        """Pay for gifts: debit each sender, credit each creator, or refuse; answer once.

        Gifting asks (gifting.gift-debit-requested); the answer, wallet.gift-debit-answered,
        goes back to it. A debit publishes `wallet.coins-debited` and
        `wallet.diamonds-credited` too. The inbox is keyed by request_id, so a gift is
        decided once, whatever is redelivered. One sender's requests apply in order
        against one running balance, so concurrent gifts can never overspend.
        """
        async with self._db.transaction() as conn:
            todo = await _new_requests(conn, topics.GIFT_DEBIT_REQUESTED, requests)
            if todo:
                await outbox.enqueue(conn, await self._pay_for_gifts(conn, todo))
            crash_point("wallet.gift.before_commit")
        crash_point("wallet.gift.after_commit")

    async def _pay_for_gifts(
        self, conn: Connection, requests: list[GiftDebitRequested]
    ) -> list[Event]:
        drafts = _gift_drafts(requests, self._shard)
        senders = {domain.coins(r.sender_id) for r in requests}
        locked = await self._repository.lock_accounts(
            conn, accounts=senders | {ref for d in drafts.values() for ref in d.accounts}
        )
        now = self._clock()
        limits = await self._repository.list_spending_limits(
            conn, user_ids=sorted({r.sender_id for r in requests})
        )
        spent = await self._repository.list_spent(
            conn,
            user_ids=sorted(limits),
            **{p: domain.period_start(p, now).date() for p in domain.PERIODS},
        )
        ledger = Ledger({ref: account.state for ref, account in locked.items()})
        applied: Applied = []
        answers: list[Event] = []
        debited: Counter[str] = Counter()  # coins per sender
        for request in requests:
            refusal = _refusal(request, drafts, ledger, limits, spent)
            if refusal is not None:
                answers.append(_refused(request, refusal))
                continue
            entries = ledger.apply(drafts[request.request_id])
            applied.append((drafts[request.request_id], entries))
            debited[request.sender_id] += request.coins
            if request.sender_id in limits:
                spent[request.sender_id] = spent.get(request.sender_id, Spent()).plus(request.coins)
            answers.append(_debited(request, entries))
        if applied:
            await self._repository.add_transactions(
                conn, applied=applied, accounts=locked, states=_states(ledger, locked)
            )
        await self._repository.add_spent(conn, day=now.date(), coins=debited)
        # Answers first: the relay publishes in order, and gifting waits for them.
        return answers + [
            event for draft, entries in applied for event in _gift_events(draft, entries)
        ]

    async def hold_diamonds(self, requests: Sequence[DiamondsHoldRequested]) -> None:
        """Reserve creators' diamonds for payouts, or refuse; answer once per request.

        Payout asks (payout.diamonds-hold-requested) before calling its provider; the
        answer, wallet.diamonds-hold-answered, goes back to it. Diamonds on hold are not
        available, so two payouts can never both reserve the same diamonds: one
        creator's requests apply in order against one running balance.
        """
        async with self._db.transaction() as conn:
            todo = await _new_requests(conn, topics.DIAMONDS_HOLD_REQUESTED, requests)
            if todo:
                await outbox.enqueue(conn, await self._reserve(conn, todo))
            crash_point("wallet.hold.before_commit")

    async def _reserve(
        self, conn: Connection, requests: list[DiamondsHoldRequested]
    ) -> list[Event]:
        locked = await self._repository.lock_accounts(
            conn,
            accounts={
                ref
                for r in requests
                for ref in (domain.diamonds(r.creator_id), domain.hold_of(r.creator_id))
            },
        )
        ledger = Ledger({ref: account.state for ref, account in locked.items()})
        applied: Applied = []
        holds: list[Hold] = []
        answers: list[Event] = []
        for request in requests:
            try:
                draft = domain.diamond_hold(request)
            except InvalidHoldError:
                log.exception("refusing hold %s", request.request_id)
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
        if applied:
            await self._repository.add_transactions(
                conn, applied=applied, accounts=locked, states=_states(ledger, locked)
            )
            await self._repository.add_holds(conn, holds=holds)
        return answers

    async def close_holds(self, payouts: Sequence[PayoutCompleted | PayoutFailed]) -> None:
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
                    closed.append((hold, self._shard(payout)))
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
            await self._post(conn, drafts)
            crash_point("wallet.hold_close.before_commit")

    async def _not_applied(self, conn: Connection, drafts: Sequence[Draft]) -> list[Draft]:
        """The drafts, once per idempotency key, that the ledger has not applied yet."""
        unique = list({draft.idempotency_key: draft for draft in drafts}.values())
        if not unique:
            return []
        done = await self._repository.applied_keys(
            conn, keys=[draft.idempotency_key for draft in unique]
        )
        return [draft for draft in unique if draft.idempotency_key not in done]

    async def _lock(
        self,
        conn: Connection,
        accounts: Iterable[AccountRef],
        locked: dict[AccountRef, LockedAccount],
    ) -> dict[AccountRef, LockedAccount]:
        """Lock (creating them if needed) the accounts not locked yet by this transaction."""
        missing = set(accounts) - locked.keys()
        if missing:
            locked = locked | await self._repository.lock_accounts(conn, accounts=missing)
        return locked

    async def _post(
        self,
        conn: Connection,
        drafts: Sequence[Draft],
        locked: dict[AccountRef, LockedAccount] | None = None,
    ) -> Applied:
        """Apply drafts in order against locked balances and write them.

        `locked`: accounts this transaction already holds (they are not locked twice).
        """
        if not drafts:
            return []
        locked = await self._lock(conn, {ref for d in drafts for ref in d.accounts}, locked or {})
        ledger = Ledger({ref: account.state for ref, account in locked.items()})
        applied = [(draft, ledger.apply(draft)) for draft in drafts]
        await self._repository.add_transactions(
            conn, applied=applied, accounts=locked, states=_states(ledger, locked)
        )
        return applied

    async def balance(self, *, user_id: str) -> Balance:
        accounts = await self._repository.get_accounts(self._db.pool, owner_id=user_id)
        coins = accounts.get(AccountKind.USER_COINS, AccountState(0))
        diamonds = accounts.get(AccountKind.USER_DIAMONDS, AccountState(0))
        on_hold = accounts.get(AccountKind.USER_DIAMOND_HOLD, AccountState(0))
        return Balance(
            user_id=user_id,
            coins=coins.balance,
            diamonds=domain.diamonds_of(diamonds.balance),
            diamonds_on_hold=domain.diamonds_of(on_hold.balance),
            frozen=coins.frozen,
            spending_limits=await self._repository.get_spending_limits(
                self._db.pool, user_id=user_id
            ),
        )

    async def history(
        self, *, user_id: str, before_entry_id: int | None, limit: int
    ) -> tuple[list[HistoryItem], int | None]:
        """A page of the user's entries, newest first, and the cursor of the next page
        (None on the last page)."""
        items = await self._repository.list_history(
            self._db.pool, owner_id=user_id, before_entry_id=before_entry_id, limit=limit + 1
        )
        more = len(items) > limit
        return items[:limit], items[limit - 1].entry_id if more else None


def _gift_drafts(
    requests: Iterable[GiftDebitRequested], shard: Callable[[GiftDebitRequested], int]
) -> dict[str, Draft]:
    """The ledger transaction of each request that makes sense (the rest are refused)."""
    drafts = {}
    for request in requests:
        try:
            drafts[request.request_id] = domain.gift_debit(request, shard=shard(request))
        except InvalidGiftDebitError:
            log.exception("refusing gift debit %s", request.request_id)
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


def _refused(request: GiftDebitRequested, reason: GiftDebitRefusal) -> GiftDebitAnswered:
    return GiftDebitAnswered(
        request_id=request.request_id,
        sender_id=request.sender_id,
        creator_id=request.creator_id,
        debited=False,
        reason=reason,
        coins=request.coins,
    )


def _debited(request: GiftDebitRequested, entries: list[Entry]) -> GiftDebitAnswered:
    _, balance_after = domain.user_total(entries, domain.coins(request.sender_id))
    return GiftDebitAnswered(
        request_id=request.request_id,
        sender_id=request.sender_id,
        creator_id=request.creator_id,
        debited=True,
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


def _states(ledger: Ledger, locked: Iterable[AccountRef]) -> dict[AccountRef, AccountState]:
    return {ref: ledger.state(ref) for ref in locked}


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


R = TypeVar("R", SpendingLimitRequested, GiftDebitRequested, DiamondsHoldRequested)


async def _new_requests(conn: Connection, topic: str, requests: Sequence[R]) -> list[R]:
    """The requests this transaction claims in the inbox, keyed by request_id: a request
    is applied and answered once, whatever is redelivered; in order, the first of each."""
    fresh = await inbox.claim_many(conn, topic=topic, message_ids=[r.request_id for r in requests])
    first: dict[str, R] = {}
    for request in requests:
        if request.request_id in fresh:
            first.setdefault(request.request_id, request)
    return list(first.values())


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


def _limit_updated(request: SpendingLimitRequested) -> SpendingLimitUpdated:
    return SpendingLimitUpdated(
        request_id=request.request_id,
        user_id=request.user_id,
        period=request.period,
        max_coins=request.max_coins,
    )
