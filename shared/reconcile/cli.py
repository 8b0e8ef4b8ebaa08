"""`coinstream reconcile`: the command (shared/cli.py registers it)."""

import asyncio
import contextlib
import json
from collections.abc import Coroutine
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from shared.auth import AuthConfigError, AuthSettings, TokenVerifier
from shared.reconcile import providers, report
from shared.reconcile.report import READ_ERRORS, Report
from shared.reconcile.watch import MetricsServer, watch
from shared.settings import InfraSettings


class Books(StrEnum):
    """Whose books a provider check reads (shared.reconcile.providers.BOOKS)."""

    simulated = "simulated"
    none = "none"


def reconcile(
    grace: Annotated[
        float,
        typer.Option(
            min=0, help="seconds a record may still be in flight; younger ones are not judged"
        ),
    ] = 300,
    database_url: Annotated[
        str | None,
        typer.Option(help="default: DATABASE_URL; a read-only role on the four schemas"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object (a line per run)")
    ] = False,
    watch_: Annotated[
        bool, typer.Option("--watch", help="run again every --interval until stopped")
    ] = False,
    interval: Annotated[float, typer.Option(min=1, help="seconds between runs")] = 60,
    full_every: Annotated[
        float,
        typer.Option(
            min=0,
            help="with --watch: seconds between full runs (every record); the runs between "
            "look at the records since the last full one; 0: every run is full",
        ),
    ] = 86_400,
    window: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="look only at records of the last SECONDS (their last change: a credit, a "
            "charge, a payout's outcome); default: every record",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="with --watch: serve Prometheus gauges on this port (a bearer token with the "
            "operator scope reads them, verified with JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL)"
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="address the metrics listen on")] = (
        "127.0.0.1"
    ),
    examples: Annotated[
        int, typer.Option(min=0, help="findings shown per check; 0: all of them")
    ] = 10,
    card: Annotated[
        Books,
        typer.Option(help="the card provider's books: the simulated provider's table, or none"),
    ] = Books.simulated,
    bank: Annotated[
        Books, typer.Option(help="the bank's books: the simulated bank's table, or none")
    ] = Books.simulated,
) -> None:
    """Match every service's records against the others' and report what does not match.

    Reads the four schemas in one snapshot and judges the records older than --grace
    (with --window, only those of the last SECONDS). Exit 0 when everything matches, 1 on
    a mismatch, 2 when the database cannot be read.
    """
    url = database_url or InfraSettings().database_url
    where = report.without_password(url)
    lookups = providers.providers(card=card.value, bank=bank.value)
    out = Console(highlight=False)

    def run_once(since: datetime | None = None) -> Coroutine[Any, Any, Report]:
        return report.run(
            url,
            grace_s=grace,
            providers=lookups,
            examples=examples or None,
            since=since,
            window_s=window,
        )

    def show(found: Report) -> None:
        if as_json:
            print(json.dumps(report.as_json(found, where)), flush=True)
        else:
            report.render(found, out, where)

    def unreadable(error: BaseException) -> None:
        if as_json:
            print(json.dumps({"database": where, "error": str(error)}), flush=True)
        else:
            out.print(f"[bold red]cannot reconcile {escape(where)}[/]: {escape(str(error))}")

    if not watch_:
        if metrics_port is not None:
            raise typer.BadParameter("only with --watch", param_hint="--metrics-port")
        try:
            found = asyncio.run(run_once())
        except READ_ERRORS as error:
            unreadable(error)
            raise typer.Exit(2) from None
        show(found)
        raise typer.Exit(0 if found.ok else 1)
    if window is not None:
        raise typer.BadParameter(
            "not with --watch: it windows its runs itself (--full-every)", param_hint="--window"
        )
    server = None if metrics_port is None else _metrics_server(metrics_host, metrics_port)

    async def watch_and_serve() -> None:
        async with server.serving() if server else contextlib.nullcontext() as metrics:
            await watch(
                run_once,
                interval_s=interval,
                full_every_s=full_every,
                on_report=show,
                on_error=unreadable,
                metrics=metrics,
            )

    asyncio.run(watch_and_serve())


def _metrics_server(host: str, port: int) -> MetricsServer:
    """The watch's gauges, as every service's /metrics: for a token with the operator
    scope, verified with the JWT_* key; without one, or with the port taken, the watch
    refuses to start."""
    try:
        verifier = TokenVerifier.from_settings(AuthSettings())
    except AuthConfigError as error:
        raise typer.BadParameter(str(error), param_hint="--metrics-port") from None
    try:
        return MetricsServer(host, port, verifier)
    except OSError as error:
        raise typer.BadParameter(
            f"cannot listen on {host}:{port}: {error.strerror}", param_hint="--metrics-port"
        ) from None
