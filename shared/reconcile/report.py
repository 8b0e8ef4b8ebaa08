"""One reconciliation run: every registered check in one snapshot, and its report."""

from collections.abc import Sequence
from dataclasses import dataclass
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

    @property
    def ok(self) -> bool:
        return all(result.mismatches == 0 for result in self.results)

    @property
    def mismatches(self) -> int:
        return sum(result.mismatches for result in self.results)


async def reconcile(
    conn: asyncpg.Connection,
    *,
    grace_s: float,
    providers: Providers,
    checks: Sequence[Check] = REGISTRY,
    examples: int | None = 10,
) -> Report:
    """Run `checks` on every schema `conn` sees, in one snapshot: each service keeps
    writing meanwhile, and all checks see the four schemas as they were at one instant."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(
            "SELECT now() AS at, now() - make_interval(secs => $1) AS cutoff", grace_s
        )
        assert row is not None
        context = Context(row["cutoff"], providers, examples)
        results = [await check.run(conn, context) for check in checks]
    return Report(results, row["at"], grace_s)


async def run(
    database_url: str, *, grace_s: float, providers: Providers, examples: int | None = 10
) -> Report:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return await reconcile(conn, grace_s=grace_s, providers=providers, examples=examples)
    finally:
        await conn.close()


def render(report: Report, console: Console, where: str) -> None:
    table = Table(
        title=f"Reconciliation of {where} (grace {report.grace_s:g} s)", title_justify="left"
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
