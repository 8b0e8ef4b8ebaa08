"""The ledger audit an operator runs: `python -m services.wallet.audit` (or
`coinstream-audit`). It reads the wallet's schema from `DATABASE_URL` alone, checks
that the ledger is whole, prints a report and exits 1 when anything is wrong (2 when
it cannot read the database), so it can gate a deploy or page someone.

The platform's accounts come in shards (one set per Kafka partition, owners `platform`
and `platform/<n>`); every total sums them, by account kind.

Checks, all in one consistent snapshot:
- every transaction sums to zero in each unit (coins, diamonds) and has entries;
- every entry continues its account's running balance;
- every account's balance equals the sum of its entries and its latest balance_after;
- coins issued (purchased + bonus) = coins held by users + coins spent;
- the value of the coins spent on gifts (one diamond per coin) = diamonds issued, and
  diamonds issued = the platform's commission + diamonds held + on hold + paid out;
- coins issued as purchased and as bonus each equal the users' postings against them;
- nothing is negative except frozen accounts (and a frozen account is negative);
- every entry that took an account below zero belongs to a clawback of user coins;
- each creator's diamonds on hold equal their open payout holds, and no hold is still
  open past its deadline (the payout service settles every hold before it).
"""

import asyncio
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from rich.console import Console
from rich.table import Table

from services.wallet.audit_queries import AuditQueries, Violations
from services.wallet.domain import DIAMOND_UNITS, diamonds_of
from shared.money import format_diamonds
from shared.settings import InfraSettings

SCHEMA = "wallet"


@dataclass(frozen=True)
class Check:
    name: str
    violations: Violations

    @property
    def ok(self) -> bool:
        return self.violations.count == 0


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


async def audit(conn: asyncpg.Connection) -> Report:
    """Run every check on the wallet schema `conn` sees, in one snapshot."""
    queries = AuditQueries()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        entries = [
            Check("transactions sum to zero", await queries.unbalanced_transactions(conn)),
            Check("entries continue balances", await queries.broken_running_balances(conn)),
            Check("balances match entries", await queries.mismatched_balances(conn)),
        ]
        signs = [
            Check("negative only when frozen", await queries.frozen_mismatches(conn)),
            Check("below zero only by clawback", await queries.negatives_not_by_clawback(conn)),
        ]
        holds = [
            Check("diamonds on hold = open holds", await queries.holds_not_matching_accounts(conn)),
            Check("no hold open past its deadline", await queries.late_holds(conn)),
        ]
        totals = await queries.entry_totals(conn)
        by_source = await queries.user_coins_by_source(conn)
        counts = await queries.counts(conn)
    return Report([*entries, *conservation(totals, by_source), *signs, *holds], totals, counts)


def conservation(totals: dict[str, int], by_source: dict[str, int]) -> list[Check]:
    """The money-supply equations, from the entry totals per account kind."""

    def equation(name: str, left: tuple[str, int], right: tuple[str, int]) -> Check:
        failed = [f"{left[0]} = {left[1]}, {right[0]} = {right[1]}"] if left[1] != right[1] else []
        return Check(name, Violations(len(failed), failed))

    purchased, bonus = -totals["coin_issuance"], -totals["bonus_issuance"]
    return [
        equation(
            "coins issued = held + spent",
            ("issued", purchased + bonus),
            ("held + spent", totals["user_coins"] + totals["coin_revenue"]),
        ),
        equation(
            "purchased coins issued = purchased postings",
            ("issued", purchased),
            ("posted to users", by_source.get("coin_issuance", 0)),
        ),
        equation(
            "bonus coins issued = bonus postings",
            ("issued", bonus),
            ("posted to users", by_source.get("bonus_issuance", 0)),
        ),
        equation(
            "coins spent on gifts = diamonds issued (1:1)",
            ("coins spent, in diamond units", totals["coin_revenue"] * DIAMOND_UNITS),
            ("diamonds issued", -totals["diamond_issuance"]),
        ),
        equation(
            "diamonds issued = commission + held + on hold + paid out",
            ("issued", -totals["diamond_issuance"]),
            (
                "commission + held + on hold + paid out",
                totals["platform_commission"]
                + totals["user_diamonds"]
                + totals["user_diamond_hold"]
                + totals["payout_clearing"],
            ),
        ),
    ]


def render(report: Report, console: Console, where: str) -> None:
    table = Table(title=f"Ledger audit of {where}", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("first findings", overflow="fold")
    for check in report.checks:
        result = "[green]ok[/]" if check.ok else f"[red]{check.violations.count} violation(s)[/]"
        table.add_row(check.name, result, "\n".join(check.violations.examples))
    console.print(table)
    totals = report.totals
    console.print(
        f"coins: purchased {-totals['coin_issuance']}, bonus {-totals['bonus_issuance']}, "
        f"held by users {totals['user_coins']}, spent {totals['coin_revenue']}"
    )
    diamonds = {kind: format_diamonds(diamonds_of(total)) for kind, total in totals.items()}
    console.print(
        f"diamonds: issued {format_diamonds(diamonds_of(-totals['diamond_issuance']))}, "
        f"platform commission {diamonds['platform_commission']}, "
        f"held by creators {diamonds['user_diamonds']}, "
        f"on hold {diamonds['user_diamond_hold']}, paid out {diamonds['payout_clearing']}"
    )
    console.print(", ".join(f"{name.replace('_', ' ')} {n}" for name, n in report.counts.items()))
    failed = sum(not check.ok for check in report.checks)
    console.print(
        "[bold green]AUDIT PASSED[/]"
        if report.ok
        else f"[bold red]AUDIT FAILED[/]: {failed} check(s)"
    )


def without_password(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def _run(database_url: str) -> Report:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": SCHEMA})
    try:
        return await audit(conn)
    finally:
        await conn.close()


def main() -> None:
    """Audit the ledger at DATABASE_URL; exit 0 when whole, 1 on violations, 2 on errors."""
    console = Console()
    url = InfraSettings().database_url
    try:
        report = asyncio.run(_run(url))
    except (OSError, asyncpg.PostgresError) as error:
        console.print(f"[bold red]cannot audit {without_password(url)}[/]: {error}")
        sys.exit(2)
    render(report, console, without_password(url))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
