"""The reconciliation's checks: one class per check, each naming itself, its query and
its finding, in a registry the report runs in order.

Every check matches one service's records against another's, in one snapshot of the
database (all four schemas at one instant). A SQL check selects one row per record it
judges: `at`, when the record came to be, and `mismatch`, NULL when the record matches
or else a sentence naming what does not. The runner judges only records older than the
grace period (`at` before the cutoff); younger ones that do not match yet are counted as
in flight (their message may still be on its way).

A run may look only at records from a window (`at` from `Context.since` on): each
check's SQL bounds the table it starts from with `_since`, so the window bounds what a
run joins and judges (`coinstream reconcile --window`, and the watch's runs between two
full ones). A record's `at` is when it reached the state the check judges (a credit's
creation, a purchase's charge, a payout's completion, a hold's closing), which does not
change afterwards, so a window from the last full run's cutoff on holds every record
that run did not judge.

The queries read the services' tables directly. No service may do that; the operators'
read-only role may (DESIGN.md), and these queries are only the reconciliation's, so
they live here, not in a service's repository. They follow the services' migrations:
ledger idempotency keys `purchase:`, `clawback:` and `gift:` + the id of what caused the
transaction, and diamond amounts in the wallet in units of 1/10,000 diamond.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, TypeVar

import asyncpg

from shared.reconcile.providers import ProviderLookup, ProviderRecord, Providers

DIAMOND_UNITS = 10_000
"""Wallet diamond accounts count in 1/10,000 diamond (services/wallet migration 0006)."""


@dataclass(frozen=True)
class Context:
    """What every check of one run shares."""

    cutoff: datetime
    """Records from before this are judged; younger ones may still be in flight."""
    providers: Providers
    since: datetime | None = None
    """Records from before this are not looked at; None: every record."""
    examples: int | None = 10
    """How many findings to describe per check; None: all of them."""


@dataclass(frozen=True)
class Result:
    """What one check found. `not_checked` says why a check could not run at all."""

    check: "Check"
    judged: int = 0
    mismatches: int = 0
    in_flight: int = 0
    examples: tuple[str, ...] = ()
    not_checked: str | None = None

    @property
    def status(self) -> str:
        if self.not_checked is not None:
            return "not checked"
        return "mismatched" if self.mismatches else "passed"


class Check(ABC):
    key: ClassVar[str]
    """A stable identifier: the `check` label of the metrics and the JSON report."""
    name: ClassVar[str]
    """How the report names the check: what must hold."""
    advice: ClassVar[str]
    """What an operator does with a mismatch (the report prints it under a failed run)."""

    @abstractmethod
    async def run(self, conn: asyncpg.Connection, context: Context) -> Result: ...


def _since(at: str) -> str:
    """The condition that puts a record in the run's window: its `at` from $2 on (NULL:
    every record). Each check applies it to the table it starts from, so the window
    bounds the joins. The run plans each query for its own values (`plan_cache_mode`),
    so without a window the condition folds away."""
    return f"($2::timestamptz IS NULL OR {at} >= $2)"


class SqlCheck(Check):
    sql: ClassVar[str]
    """One row per record looked at: `at` (timestamptz), `mismatch` (text, NULL if it
    matches); `$2` is the window's start (apply `_since` to the `at` column)."""

    def statement(self) -> str:
        """The query a run sends: $1 the cutoff, $2 the window's start, $3 the examples."""
        return f"""
            WITH records AS MATERIALIZED ({self.sql})
            SELECT count(*) FILTER (WHERE at < $1) AS judged,
                   count(mismatch) FILTER (WHERE at < $1) AS mismatches,
                   count(mismatch) FILTER (WHERE at >= $1) AS in_flight,
                   ARRAY(SELECT mismatch FROM records
                         WHERE at < $1 AND mismatch IS NOT NULL
                         ORDER BY at, mismatch LIMIT $3) AS examples
            FROM records
            """

    async def run(self, conn: asyncpg.Connection, context: Context) -> Result:
        row = await conn.fetchrow(self.statement(), context.cutoff, context.since, context.examples)
        assert row is not None
        return Result(
            self, row["judged"], row["mismatches"], row["in_flight"], tuple(row["examples"])
        )


class ProviderCheck(Check):
    """Each record of ours must have its twin in a provider's books, asked through a
    `ProviderLookup` (a provider keeps its own records; we cannot join them in SQL)."""

    sql: ClassVar[str]
    """Records older than $1 (and from the window's start, $2, on: apply `_since`): `key`
    (what the provider knows them by), `amount_minor`, `currency`, `what` (a description)."""
    outcome: ClassVar[str]
    """What the provider must say of each of them."""

    @abstractmethod
    def lookup(self, providers: Providers) -> ProviderLookup: ...

    CHUNK: ClassVar[int] = 5_000
    """Records read and asked about at a time: a full run's memory does not grow with
    the history (a million purchases held at once would not fit the watcher's pod)."""

    async def run(self, conn: asyncpg.Connection, context: Context) -> Result:
        lookup = self.lookup(context.providers)
        if lookup.unavailable is not None:
            return Result(self, not_checked=lookup.unavailable)
        judged = mismatches = 0
        examples: list[str] = []
        cursor = await conn.cursor(self.sql, context.cutoff, context.since)
        while rows := await cursor.fetch(self.CHUNK):
            found = await lookup.find(conn, [row["key"] for row in rows])
            judged += len(rows)
            for row in rows:
                if (problem := self.problem(row, found.get(row["key"]))) is not None:
                    mismatches += 1
                    if context.examples is None or len(examples) < context.examples:
                        examples.append(f"{row['what']}: {problem}")
        return Result(self, judged, mismatches, 0, tuple(examples))

    def problem(self, row: asyncpg.Record, record: ProviderRecord | None) -> str | None:
        """What is wrong with our record given the provider's, or None when they match."""
        if record is None:
            return "the provider has no record of it"
        if record.outcome != self.outcome:
            return f"the provider says {record.outcome}"
        if (record.amount_minor, record.currency) != (row["amount_minor"], row["currency"]):
            return f"the provider moved {record.amount_minor} {record.currency} (minor units)"
        return None


class NothingMovedCheck(ProviderCheck):
    """The other way round: a record of ours that moved no money (a failed purchase or
    payout) must have no `outcome` in the provider's books; none at all is fine."""

    moved: ClassVar[str]
    """How a finding says the provider moved the money anyway ("the bank paid")."""

    def problem(self, row: asyncpg.Record, record: ProviderRecord | None) -> str | None:
        if record is not None and record.outcome == self.outcome:
            return f"{self.moved} {record.amount_minor} {record.currency} (minor units)"
        return None


REGISTRY: list[Check] = []
"""Every check, in the order the report shows them."""

C = TypeVar("C", bound=type[Check])


def registered(cls: C) -> C:
    REGISTRY.append(cls())
    return cls


# ─── payment <-> wallet: purchases and clawbacks ─────────────────────────────────────

# The id a ledger transaction's idempotency key names: `purchase:<payment_id>` etc. Ids
# are opaque and may hold a colon themselves, so only the first one separates.
_KEYED_ID = "substr(t.idempotency_key, strpos(t.idempotency_key, ':') + 1)"


@registered
class CreditsHaveAPurchase(SqlCheck):
    key = "credits_without_purchase"
    name = "wallet credits have a completed purchase"
    advice = (
        "coins were credited that payment never sold (or sold to another user, or another "
        "amount): a forged or corrupted purchase-completed. Freeze the user, find the message "
        "(the ledger transaction's request_id) and who published it, then claw the coins back."
    )
    sql = f"""
        WITH credits AS (
            SELECT {_KEYED_ID} AS payment_id, t.created_at, a.owner_id AS user_id,
                   coalesce(sum(e.amount) FILTER (WHERE c.kind = 'coin_issuance'), 0) AS coins,
                   coalesce(sum(e.amount) FILTER (WHERE c.kind = 'bonus_issuance'), 0) AS bonus
            FROM wallet.ledger_transactions t
            JOIN wallet.ledger_entries e ON e.tx_id = t.tx_id
            JOIN wallet.accounts a ON a.account_id = e.account_id AND a.kind = 'user_coins'
            LEFT JOIN wallet.accounts c ON c.account_id = e.counter_account_id
            WHERE t.kind = 'purchase' AND {_since("t.created_at")}
            GROUP BY t.tx_id, a.owner_id
        )
        SELECT w.created_at AS at,
               CASE WHEN p.payment_id IS NULL OR p.status NOT IN ('completed', 'reversed')
                         OR (p.user_id, p.coins, p.bonus_coins)
                            IS DISTINCT FROM (w.user_id, w.coins, w.bonus)
               THEN format('credit of payment %s to %s (%s + %s bonus coins): ',
                           w.payment_id, w.user_id, w.coins, w.bonus)
                    || CASE
                        WHEN p.payment_id IS NULL THEN 'payment has no such purchase'
                        WHEN p.status NOT IN ('completed', 'reversed')
                            THEN format('payment says the purchase is %s', p.status)
                        ELSE format('payment sold it to %s, %s + %s bonus coins',
                                    p.user_id, p.coins, p.bonus_coins)
                    END
               END AS mismatch
        FROM credits w LEFT JOIN payment.purchases p ON p.payment_id = w.payment_id
    """


@registered
class PurchasesAreCredited(SqlCheck):
    key = "purchases_without_credit"
    name = "completed purchases are credited"
    advice = (
        "a user paid and got no coins: the purchase-completed event is stuck or lost. "
        "Check the wallet's consumer lag and payment.purchase-completed.dlq; replay the "
        "dead letter once its cause is fixed (the wallet credits a payment_id once)."
    )
    sql = f"""
        SELECT coalesce(p.charged_at, p.updated_at) AS at,
               CASE WHEN NOT EXISTS (
                   SELECT FROM wallet.ledger_transactions t
                   WHERE t.idempotency_key = 'purchase:' || p.payment_id
               ) THEN format('%s purchase %s (request %s) of %s, %s + %s bonus coins: '
                             'no credit in the wallet', p.status, p.payment_id, p.request_id,
                             p.user_id, p.coins, p.bonus_coins)
               END AS mismatch
        FROM payment.purchases p
        WHERE p.status IN ('completed', 'reversed')  -- a reversed purchase was completed first
          AND {_since("coalesce(p.charged_at, p.updated_at)")}
    """


@registered
class ClawbacksHaveAReversal(SqlCheck):
    key = "clawbacks_without_reversal"
    name = "clawbacks have a reversed purchase"
    advice = (
        "coins were taken back for a purchase payment never reversed (or another amount): "
        "a forged or corrupted purchase-reversed. Compare with the provider's chargeback "
        "and credit the user back if there was none."
    )
    sql = f"""
        WITH clawbacks AS (
            SELECT {_KEYED_ID} AS payment_id, t.request_id AS chargeback_id, t.created_at,
                   a.owner_id AS user_id, -sum(e.amount) AS coins
            FROM wallet.ledger_transactions t
            JOIN wallet.ledger_entries e ON e.tx_id = t.tx_id
            JOIN wallet.accounts a ON a.account_id = e.account_id AND a.kind = 'user_coins'
            WHERE t.kind = 'clawback' AND {_since("t.created_at")}
            GROUP BY t.tx_id, a.owner_id
        )
        SELECT w.created_at AS at,
               CASE WHEN p.payment_id IS NULL OR p.status <> 'reversed'
                         OR (p.user_id, p.coins + p.bonus_coins)
                            IS DISTINCT FROM (w.user_id, w.coins)
               THEN format('clawback of payment %s from %s (%s coins, chargeback %s): ',
                           w.payment_id, w.user_id, w.coins, w.chargeback_id)
                    || CASE
                        WHEN p.payment_id IS NULL THEN 'payment has no such purchase'
                        WHEN p.status <> 'reversed'
                            THEN format('payment says the purchase is %s', p.status)
                        ELSE format('payment reversed it for %s, %s coins',
                                    p.user_id, p.coins + p.bonus_coins)
                    END
               END AS mismatch
        FROM clawbacks w LEFT JOIN payment.purchases p ON p.payment_id = w.payment_id
    """


@registered
class ReversalsAreClawedBack(SqlCheck):
    key = "reversals_without_clawback"
    name = "reversed purchases are clawed back"
    advice = (
        "a chargeback took the money back but the user kept the coins. If the wallet "
        "holds the reversal waiting for its credit, the credit is missing (see 'completed "
        "purchases are credited'); else look for payment.purchase-reversed in its "
        "dead-letter topic and replay it."
    )
    sql = f"""
        SELECT p.updated_at AS at,
               CASE WHEN NOT EXISTS (
                   SELECT FROM wallet.ledger_transactions t
                   WHERE t.idempotency_key = 'clawback:' || p.payment_id
               ) THEN format('reversed purchase %s of %s (%s coins): ', p.payment_id,
                             p.user_id, p.coins + p.bonus_coins)
                      || CASE WHEN EXISTS (
                             SELECT FROM wallet.pending_clawbacks c
                             WHERE c.payment_id = p.payment_id
                         ) THEN 'the wallet holds the reversal, waiting for its credit'
                         ELSE 'no clawback in the wallet' END
               END AS mismatch
        FROM payment.purchases p
        WHERE p.status = 'reversed' AND {_since("p.updated_at")}
    """


# ─── gifting <-> wallet: gifts ───────────────────────────────────────────────────────


@registered
class WalletGiftsWereSent(SqlCheck):
    key = "wallet_gifts_without_sent_gift"
    name = "wallet gifts have a sent gift"
    advice = (
        "coins were spent and diamonds issued for a gift gifting did not send (or sent "
        "with other coins or diamonds): a forged gift-debit-requested, or gifting "
        "rejected a gift the wallet debited. Reverse the gift in the ledger by hand "
        "after finding the message."
    )
    sql = f"""
        WITH gifts AS (
            SELECT {_KEYED_ID} AS request_id, t.created_at,
                   min(a.owner_id) FILTER (WHERE a.kind = 'user_coins') AS sender_id,
                   coalesce(-sum(e.amount) FILTER (WHERE a.kind = 'user_coins'), 0) AS coins,
                   min(a.owner_id) FILTER (WHERE a.kind = 'user_diamonds') AS creator_id,
                   coalesce(sum(e.amount) FILTER (WHERE a.kind = 'user_diamonds'), 0) AS units
            FROM wallet.ledger_transactions t
            JOIN wallet.ledger_entries e ON e.tx_id = t.tx_id
            JOIN wallet.accounts a ON a.account_id = e.account_id
            WHERE t.kind = 'gift' AND {_since("t.created_at")}
            GROUP BY t.tx_id
        )
        SELECT w.created_at AS at,
               CASE WHEN g.request_id IS NULL OR g.status <> 'sent'
                         OR (g.sender_id, g.coins, g.diamonds * {DIAMOND_UNITS})
                            IS DISTINCT FROM (w.sender_id, w.coins, w.units)
                         -- a creator share of 0 credits the creator nothing: no entry
                         OR (w.units > 0 AND g.creator_id IS DISTINCT FROM w.creator_id)
               THEN format('gift %s in the wallet (%s -> %s, %s coins, %s diamonds): ',
                           w.request_id, w.sender_id, coalesce(w.creator_id, '-'), w.coins,
                           trim_scale(w.units::numeric / {DIAMOND_UNITS}))
                    || CASE
                        WHEN g.request_id IS NULL THEN 'gifting has no such request'
                        WHEN g.status <> 'sent' THEN format('gifting says %s%s', g.status,
                                                            ' (' || g.reason || ')')
                        ELSE format('gifting sent %s -> %s, %s coins, %s diamonds',
                                    g.sender_id, g.creator_id, g.coins, g.diamonds)
                    END
               END AS mismatch
        FROM gifts w LEFT JOIN gifting.gift_requests g ON g.request_id = w.request_id
    """


@registered
class SentGiftsAreDebited(SqlCheck):
    key = "sent_gifts_without_debit"
    name = "sent gifts are debited in the wallet"
    advice = (
        "gifting announced a gift the wallet never debited: the creator was told of "
        "diamonds they do not have. Find the gift's wallet.gift-debit-answered; an answer "
        "that names no debit the wallet made is forged."
    )
    sql = f"""
        SELECT g.decided_at AS at,
               CASE WHEN NOT EXISTS (
                   SELECT FROM wallet.ledger_transactions t
                   WHERE t.idempotency_key = 'gift:' || g.request_id
               ) THEN format('sent gift %s (%s -> %s, %s coins, %s diamonds): '
                             'no gift transaction in the wallet', g.request_id, g.sender_id,
                             g.creator_id, g.coins, g.diamonds)
               END AS mismatch
        FROM gifting.gift_requests g
        WHERE g.status = 'sent' AND {_since("g.decided_at")}
    """


# ─── payout <-> wallet: holds ────────────────────────────────────────────────────────


def _closed_holds(hold_status: str, payout_status: str) -> str:
    """Holds the wallet closed one way, each matched to the payout of its payout_id."""
    return f"""
        SELECT h.closed_at AS at,
               CASE WHEN p.payout_id IS NULL OR p.status <> '{payout_status}'
                         OR (p.request_id, p.creator_id, p.diamonds * {DIAMOND_UNITS})
                            IS DISTINCT FROM (h.request_id, h.creator_id, h.units)
               THEN format('{hold_status} hold of payout %s (request %s, %s, %s diamonds): ',
                           h.payout_id, h.request_id, h.creator_id,
                           trim_scale(h.units::numeric / {DIAMOND_UNITS}))
                    || CASE
                        WHEN p.payout_id IS NULL THEN 'payout has no such payout'
                        WHEN p.status <> '{payout_status}' THEN format(
                            'payout says %s%s', p.status, ' (' || p.reason || ')')
                        ELSE format('payout says request %s, %s, %s diamonds',
                                    p.request_id, p.creator_id, p.diamonds)
                    END
               END AS mismatch
        FROM wallet.holds h LEFT JOIN payout.payouts p ON p.payout_id = h.payout_id
        WHERE h.status = '{hold_status}' AND {_since("h.closed_at")}
    """


@registered
class PostedHoldsWerePaid(SqlCheck):
    key = "posted_holds_without_completed_payout"
    name = "posted holds have a completed payout"
    advice = (
        "diamonds left the creator for a payout that was not completed: a forged "
        "payout-completed, or the wallet posted the wrong hold. Ask the bank whether the "
        "payout was paid; if not, give the diamonds back by hand."
    )
    sql = _closed_holds("posted", "completed")


@registered
class VoidedHoldsFailed(SqlCheck):
    key = "voided_holds_without_failed_payout"
    name = "voided holds have a failed payout"
    advice = (
        "diamonds were released for a payout that did not fail: if the bank paid it, "
        "the creator was paid and kept the diamonds (a double cash-out). Freeze the "
        "creator's payouts and take the diamonds back by hand."
    )
    sql = _closed_holds("voided", "failed")


@registered
class CompletedPayoutsPostedTheirHold(SqlCheck):
    key = "completed_payouts_without_posted_hold"
    name = "completed payouts have a posted hold"
    advice = (
        "the bank paid but the creator's diamonds were not taken: the payout-completed "
        "event is stuck or was refused by the wallet. Check the wallet's lag and "
        "payout.payout-completed.dlq; replay once the cause is fixed."
    )
    sql = f"""
        SELECT p.updated_at AS at,
               CASE WHEN h.request_id IS NULL OR h.status <> 'posted'
                         OR (h.payout_id, h.creator_id, h.units)
                            IS DISTINCT FROM (p.payout_id, p.creator_id,
                                              p.diamonds * {DIAMOND_UNITS})
               THEN format('completed payout %s (request %s, %s, %s diamonds): ',
                           p.payout_id, p.request_id, p.creator_id, p.diamonds)
                    || CASE
                        WHEN h.request_id IS NULL THEN 'the wallet holds nothing for it'
                        WHEN h.status <> 'posted' THEN format('its hold is %s', h.status)
                        ELSE format('the wallet held %s, %s, %s diamonds', h.payout_id,
                                    h.creator_id, trim_scale(h.units::numeric / {DIAMOND_UNITS}))
                    END
               END AS mismatch
        FROM payout.payouts p LEFT JOIN wallet.holds h ON h.request_id = p.request_id
        WHERE p.status = 'completed' AND {_since("p.updated_at")}
    """


@registered
class FailedPayoutsReleasedTheirHold(SqlCheck):
    key = "failed_payouts_with_hold_kept"
    name = "failed payouts release their hold"
    advice = (
        "a payout failed but the creator's diamonds are still held (or were paid out): "
        "the payout-failed event is stuck or was refused. Check payout.payout-failed.dlq "
        "and the wallet's lag; an open hold also shows in the ledger audit past its deadline."
    )
    sql = f"""
        SELECT p.updated_at AS at,
               CASE WHEN h.status <> 'voided'
               THEN format('failed payout %s (request %s, %s, %s diamonds, %s): its hold is %s',
                           p.payout_id, p.request_id, p.creator_id, p.diamonds, p.reason,
                           h.status)
               END AS mismatch
        FROM payout.payouts p JOIN wallet.holds h ON h.request_id = p.request_id
        WHERE p.status = 'failed'  -- refused before a hold: nothing to release
          AND {_since("p.updated_at")}
    """


# ─── our records <-> the providers' ──────────────────────────────────────────────────


@registered
class PurchasesWereCharged(ProviderCheck):
    key = "purchases_without_charge"
    name = "completed purchases were charged"
    advice = (
        "coins were sold for money the card provider never took: a forged or corrupted "
        "purchase. Claw the coins back and find out who completed it."
    )
    outcome = "approved"
    sql = f"""
        SELECT p.request_id AS key, p.price_minor::bigint AS amount_minor, p.currency,
               format('purchase %s (request %s) of %s', p.payment_id, p.request_id,
                      p.user_id) AS what
        FROM payment.purchases p  -- the charge's idempotency key is the request_id
        WHERE p.status IN ('completed', 'reversed') AND coalesce(p.charged_at, p.updated_at) < $1
          AND {_since("coalesce(p.charged_at, p.updated_at)")}
        ORDER BY coalesce(p.charged_at, p.updated_at)
    """

    def lookup(self, providers: Providers) -> ProviderLookup:
        return providers.card


@registered
class FailedPurchasesWereNotCharged(NothingMovedCheck):
    key = "failed_purchases_charged"
    name = "failed purchases were not charged"
    advice = (
        "the user paid and got no coins: a charge whose answer was lost was failed. "
        "Refund it at the provider (its idempotency key is the request_id), or complete "
        "the purchase by hand and credit the coins, never both."
    )
    outcome = "approved"
    moved = "the provider charged"
    sql = f"""
        SELECT p.request_id AS key, p.price_minor AS amount_minor, p.currency,
               format('failed purchase (request %s, %s) of %s', p.request_id, p.reason,
                      p.user_id) AS what
        FROM payment.purchases p
        WHERE p.status = 'failed' AND p.updated_at < $1 AND {_since("p.updated_at")}
        ORDER BY p.updated_at
    """

    def lookup(self, providers: Providers) -> ProviderLookup:
        return providers.card


@registered
class PayoutsWerePaid(ProviderCheck):
    key = "payouts_without_bank_payment"
    name = "completed payouts were paid by the bank"
    advice = (
        "a payout is completed (the creator's diamonds are gone) but the bank has no "
        "payment, or another amount: pay it (same payout_id, the bank pays it once) or "
        "give the diamonds back."
    )
    outcome = "paid"
    sql = f"""
        SELECT p.payout_id AS key, p.amount_minor, p.currency,
               format('completed payout %s (request %s) of %s', p.payout_id, p.request_id,
                      p.creator_id) AS what
        FROM payout.payouts p
        WHERE p.status = 'completed' AND p.updated_at < $1 AND {_since("p.updated_at")}
        ORDER BY p.updated_at
    """

    def lookup(self, providers: Providers) -> ProviderLookup:
        return providers.bank


@registered
class FailedPayoutsWereNotPaid(NothingMovedCheck):
    key = "failed_payouts_paid"
    name = "failed payouts were not paid by the bank"
    advice = (
        "the creator was paid and has the diamonds back (the hold was voided): take "
        "the diamonds (a manual hold, posted) or recover the payment, never both."
    )
    outcome = "paid"
    moved = "the bank paid"
    sql = f"""
        SELECT p.payout_id AS key, p.amount_minor, p.currency,
               format('failed payout %s (request %s, %s) of %s', p.payout_id, p.request_id,
                      p.reason, p.creator_id) AS what
        FROM payout.payouts p
        WHERE p.status = 'failed' AND p.updated_at < $1 AND {_since("p.updated_at")}
        ORDER BY p.updated_at
    """

    def lookup(self, providers: Providers) -> ProviderLookup:
        return providers.bank
