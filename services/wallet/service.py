"""Wallet use cases: apply ledger transactions exactly once and report them."""

from collections.abc import Sequence
from dataclasses import dataclass

from services.wallet import domain
from services.wallet.domain import AccountKind, Draft, Entry, Ledger
from services.wallet.repository import HistoryItem, WalletRepository
from shared import inbox, outbox, topics
from shared.contracts import CoinsCredited, PurchaseCompleted
from shared.db import Connection, Database
from shared.faults import crash_point


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
        async with self._db.transaction() as conn:
            fresh = await inbox.claim_many(
                conn, topic=topics.PURCHASE_COMPLETED, message_ids=[e.event_id for e in events]
            )
            events = [e for e in events if e.event_id in fresh]
            drafts = [domain.purchase_credit(e) for e in events]
            event_of = {d.idempotency_key: e for d, e in zip(drafts, events, strict=True)}
            applied = await self._post(conn, drafts)
            await outbox.enqueue(
                conn, [_credited(event_of[d.idempotency_key], entries) for d, entries in applied]
            )
            crash_point("wallet.credit.before_commit")
        crash_point("wallet.credit.after_commit")

    async def _post(
        self, conn: Connection, drafts: Sequence[Draft]
    ) -> list[tuple[Draft, list[Entry]]]:
        """Apply the drafts not applied before, in order, against locked balances."""
        unique = list({draft.idempotency_key: draft for draft in drafts}.values())
        done = await self._repository.applied_keys(
            conn, keys=[draft.idempotency_key for draft in unique]
        )
        todo = [draft for draft in unique if draft.idempotency_key not in done]
        if not todo:
            return []
        accounts = await self._repository.lock_accounts(
            conn, accounts={ref for draft in todo for ref in draft.accounts}
        )
        ledger = Ledger({ref: locked.balance for ref, locked in accounts.items()})
        applied = [(draft, ledger.apply(draft)) for draft in todo]
        await self._repository.add_transactions(conn, applied=applied, accounts=accounts)
        return applied

    async def balance(self, *, user_id: str) -> Balance:
        balances = await self._repository.get_balances(self._db.pool, owner_id=user_id)
        return Balance(
            user_id=user_id,
            coins=balances.get(AccountKind.USER_COINS, 0),
            diamonds=balances.get(AccountKind.USER_DIAMONDS, 0),
            diamonds_on_hold=0,
            frozen=False,
        )

    async def history(
        self, *, user_id: str, before_entry_id: int | None, limit: int
    ) -> list[HistoryItem]:
        return await self._repository.list_history(
            self._db.pool, owner_id=user_id, before_entry_id=before_entry_id, limit=limit
        )


def _credited(event: PurchaseCompleted, entries: list[Entry]) -> CoinsCredited:
    user_account = domain.coins(event.user_id)
    return CoinsCredited(
        request_id=event.request_id,
        user_id=event.user_id,
        amount=event.coins + event.bonus_coins,
        balance_after=[e for e in entries if e.account == user_account][-1].balance_after,
        payment_id=event.payment_id,
        coins=event.coins,
        bonus_coins=event.bonus_coins,
    )
