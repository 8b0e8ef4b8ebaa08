"""Wallet use cases: apply ledger transactions exactly once and report them."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.wallet import domain
from services.wallet.domain import AccountKind, AccountRef, AccountState, Draft, Entry, Ledger
from services.wallet.repository import HistoryItem, LockedAccount, WalletRepository
from shared import inbox, outbox, topics
from shared.contracts import CoinsCredited, PurchaseCompleted
from shared.db import Connection, Database
from shared.faults import crash_point

Applied = list[tuple[Draft, list[Entry]]]


@dataclass(frozen=True)
class Balance:
    user_id: str
    coins: int
    diamonds: int
    diamonds_on_hold: int
    frozen: bool


class WalletService:
    def __init__(self, db: Database, repository: WalletRepository) -> None:
        self._db = db
        self._repository = repository

    async def credit_purchases(self, events: Sequence[PurchaseCompleted]) -> None:
        """Credit bought coins once per payment, and publish `wallet.coins-credited`.

        Two guards, both in the batch's one transaction: the inbox skips an event seen
        before (a redelivery), the ledger's idempotency key skips a payment already
        credited under another event id.
        """
        crash_point("wallet.credit.received")
        # Built before anything is written: one nonsensical event fails the batch at
        # once, and the consumer isolates it by halving.
        drafts = {e.event_id: domain.purchase_credit(e) for e in events}
        async with self._db.transaction() as conn:
            fresh = await inbox.claim_many(
                conn, topic=topics.PURCHASE_COMPLETED, message_ids=list(drafts)
            )
            event_of = {drafts[e.event_id].idempotency_key: e for e in events}
            todo = await self._not_applied(conn, [drafts[i] for i in drafts if i in fresh])
            applied = await self._post(conn, todo)
            await outbox.enqueue(
                conn, [_credited(event_of[d.idempotency_key], entries) for d, entries in applied]
            )
            crash_point("wallet.credit.before_commit")
        crash_point("wallet.credit.after_commit")

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
        return Balance(
            user_id=user_id,
            coins=coins.balance,
            diamonds=accounts.get(AccountKind.USER_DIAMONDS, AccountState(0)).balance,
            diamonds_on_hold=accounts.get(AccountKind.USER_DIAMOND_HOLD, AccountState(0)).balance,
            frozen=coins.frozen,
        )

    async def history(
        self, *, user_id: str, before_entry_id: int | None, limit: int
    ) -> list[HistoryItem]:
        return await self._repository.list_history(
            self._db.pool, owner_id=user_id, before_entry_id=before_entry_id, limit=limit
        )


def _states(ledger: Ledger, locked: Iterable[AccountRef]) -> dict[AccountRef, AccountState]:
    return {ref: ledger.state(ref) for ref in locked}


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
