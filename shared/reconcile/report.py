"""One reconciliation run: every registered check in one snapshot, and its report."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.reconcile.checks import REGISTRY, Check, Context, Result
from shared.reconcile.providers import Providers

READ_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""The database cannot be read: unreachable, refused, a schema or a right missing."""


@dataclass(frozen=True)
class Report:
    results: list[Result]
    at: datetime
    """The database's time of the snapshot."""
    grace_s: float
    cutoff: datetime
    """Records from before this were judged (the snapshot's time less the grace)."""
    since: datetime | None = None
    """Records from before this were not looked at; None: every record was."""
    examples: int | None = 10
    """How many findings per check it describes; None: all of them."""

    @property
    def ok(self) -> bool:
        return all(result.mismatches == 0 for result in self.results)

    @property
    def mismatches(self) -> int:
        return sum(result.mismatches for result in self.results)


def combined(full: Report, recent: Report) -> Report:
    """What the watch reports between two full runs: `full`'s verdict on the records
    before its cutoff and `recent`'s on those since (a run windowed from `full.cutoff`
    on); the two never look at the same record. A mismatch `full` found and an operator
    has mended since stays counted until the next full run."""
    if recent.since != full.cutoff:
        raise ValueError("the recent run must look at the records from the full run's cutoff on")
    before = {result.check.key: result for result in full.results}
    results = []
    for result in recent.results:
        old = before.get(result.check.key)
        if old is None or old.not_checked is not None or result.not_checked is not None:
            results.append(result)
            continue
        results.append(
            replace(
                result,
                judged=old.judged + result.judged,
                mismatches=old.mismatches + result.mismatches,
                examples=(old.examples + result.examples)[: recent.examples],
            )
        )
    return replace(recent, results=results, since=None)


async def reconcile(
    conn: asyncpg.Connection,
    *,
    grace_s: float,
    providers: Providers,
    checks: Sequence[Check] = REGISTRY,
    examples: int | None = 10,
    since: datetime | None = None,
    window_s: float | None = None,
) -> Report:
    """Run `checks` on every schema `conn` sees, in one snapshot: each service keeps
    writing meanwhile, and all checks see the four schemas as they were at one instant.
    Records from before `since`, or older than `window_s`, are not looked at."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # Each query is planned for this run's window (none: the bound folds away),
        # never with a generic plan that would scan the history either way.
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        row = await conn.fetchrow(
            """
            SELECT now() AS at, now() - make_interval(secs => $1) AS cutoff,
                   coalesce($2::timestamptz, now() - make_interval(secs => $3)) AS since
            """,
            grace_s,
            since,
            window_s,
        )
        assert row is not None
        context = Context(row["cutoff"], providers, since=row["since"], examples=examples)
        results = [await check.run(conn, context) for check in checks]
    return Report(results, row["at"], grace_s, row["cutoff"], row["since"], examples)


async def run(
    database_url: str,
    *,
    grace_s: float,
    providers: Providers,
    examples: int | None = 10,
    since: datetime | None = None,
    window_s: float | None = None,
) -> Report:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return await reconcile(
            conn,
            grace_s=grace_s,
            providers=providers,
            examples=examples,
            since=since,
            window_s=window_s,
        )
    finally:
        await conn.close()


def render(report: Report, console: Console, where: str) -> None:
    window = "" if report.since is None else f", records since {report.since:%Y-%m-%d %H:%M:%S %Z}"
    table = Table(
        title=f"Reconciliation of {where} (grace {report.grace_s:g} s{window})",
        title_justify="left",
    )
    table.add_column("check")
    table.add_column("result")
    table.add_column("judged", justify="right")
    table.add_column("in flight", justify="right")
    table.add_column("first findings", overflow="fold")
    for result in report.results:
        table.add_row(
            result.check.name,
            _verdict(result),
            "-" if result.not_checked else str(result.judged),
            "-" if result.not_checked else str(result.in_flight),
            escape(result.not_checked or "\n".join(result.examples)),
        )
    console.print(table)
    failed = [result for result in report.results if result.mismatches]
    for result in failed:
        console.print(f"[bold]{escape(result.check.name)}[/]: {escape(result.check.advice)}")
    skipped = sum(result.not_checked is not None for result in report.results)
    note = f" ({skipped} not checked)" if skipped else ""
    console.print(
        f"[bold green]RECONCILED[/]: every record older than the grace matches{note}"
        if report.ok
        else f"[bold red]RECONCILIATION FAILED[/]: {report.mismatches} mismatch(es) "
        f"in {len(failed)} check(s){note}"
    )


def _verdict(result: Result) -> str:
    if result.not_checked is not None:
        return "[yellow]not checked[/]"
    if result.mismatches:
        return f"[red]{result.mismatches} mismatch(es)[/]"
    return "[green]passed[/]"


def as_json(report: Report, where: str) -> dict[str, Any]:
    return {
        "database": where,
        "at": report.at.isoformat(),
        "grace_s": report.grace_s,
        "cutoff": report.cutoff.isoformat(),
        "since": None if report.since is None else report.since.isoformat(),
        "ok": report.ok,
        "mismatches": report.mismatches,
        "checks": [
            {
                "check": result.check.key,
                "name": result.check.name,
                "status": result.status.replace(" ", "_"),
                "judged": result.judged,
                "mismatches": result.mismatches,
                "in_flight": result.in_flight,
                "findings": list(result.examples),
                "reason": result.not_checked,
            }
            for result in report.results
        ],
    }


def without_password(url: str) -> str:
    """The database URL to print: user, host, port and database, no password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
