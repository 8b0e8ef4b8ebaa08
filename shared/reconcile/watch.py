"""`--watch`: reconcile every interval and export the outcome as Prometheus gauges."""

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime

import uvicorn
from prometheus_client import CollectorRegistry, Gauge
from starlette.applications import Starlette

from shared.auth import TokenVerifier
from shared.http import bearer_auth, health_routes
from shared.reconcile.report import READ_ERRORS, Report, combined


class Metrics:
    """The gauges of the last run, served at http://HOST:PORT/metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.mismatches = Gauge(
            "coinstream_reconcile_mismatches",
            "Records older than the grace period that do not match, per check",
            ["check"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "coinstream_reconcile_in_flight",
            "Records younger than the grace period that do not match yet, per check",
            ["check"],
            registry=registry,
        )
        self.not_checked = Gauge(
            "coinstream_reconcile_not_checked",
            "1 for a check that could not run (the report says why)",
            ["check"],
            registry=registry,
        )
        self.last_run = Gauge(
            "coinstream_reconcile_last_run_timestamp_seconds",
            "When the last run ended (Unix time), whatever its outcome",
            registry=registry,
        )
        self.last_success = Gauge(
            "coinstream_reconcile_last_run_success",
            "1 when the last run read every schema, 0 when the database could not be read",
            registry=registry,
        )
        self.last_success_time = Gauge(
            "coinstream_reconcile_last_success_timestamp_seconds",
            "When the last run that read every schema ended (Unix time)",
            registry=registry,
        )
        self.last_full_time = Gauge(
            "coinstream_reconcile_last_full_run_timestamp_seconds",
            "When the last run that looked at every record ended (Unix time)",
            registry=registry,
        )
        self.duration = Gauge(
            "coinstream_reconcile_run_duration_seconds",
            "How long the last run of each kind took: full (every record) or recent "
            "(the records since the last full run's cutoff)",
            ["kind"],
            registry=registry,
        )

    def record(self, report: Report, *, full: bool, took_s: float) -> None:
        """A run that read every schema: a `full` one or a recent one, in `took_s`."""
        for result in report.results:
            key = result.check.key
            self.not_checked.labels(key).set(result.not_checked is not None)
            if result.not_checked is None:
                self.mismatches.labels(key).set(result.mismatches)
                self.in_flight.labels(key).set(result.in_flight)
        now = time.time()
        self.last_run.set(now)
        self.last_success.set(1)
        self.last_success_time.set(now)
        self.duration.labels("full" if full else "recent").set(took_s)
        if full:
            self.last_full_time.set(now)

    def failed(self) -> None:
        """The database could not be read: the mismatch gauges keep the last values seen."""
        self.last_run.set(time.time())
        self.last_success.set(0)


class MetricsServer:
    """The gauges at http://HOST:PORT/metrics, as every service serves its own: a bearer
    token with the operator scope (401 without a valid one, 403 without the scope), and
    `/health/live` and `/health/ready` open to probes. It runs on the watch's event loop
    and stops with it; the watch's signal handlers, not uvicorn's, end both."""

    def __init__(self, host: str, port: int, verifier: TokenVerifier) -> None:
        # Bound here, so a port in use fails the command at once with the OSError's reason.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        routes = health_routes(self.registry, {})
        app = Starlette(routes=routes, middleware=[bearer_auth(verifier, routes)])
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
        )
        self._server = _WithoutSignals(config)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Metrics]:
        task = asyncio.create_task(self._server.serve([self._socket]), name="reconcile-metrics")
        try:
            yield self.metrics
        finally:
            self._server.should_exit = True
            await task


class _WithoutSignals(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def watch(
    run_once: Callable[[datetime | None], Awaitable[Report]],
    *,
    interval_s: float,
    full_every_s: float,
    on_report: Callable[[Report], None],
    on_error: Callable[[BaseException], None],
    metrics: Metrics | None,
) -> None:
    """Reconcile every `interval_s` until SIGINT or SIGTERM.

    A full run looks at every record; it runs first, then whenever the last one started
    `full_every_s` ago or more (0: every run). The runs between look only at the records
    from the last full run's cutoff on (`run_once(since)`), so their cost follows what
    came since, not the whole history; each is reported combined with the full run's
    verdict on the records before (`report.combined`).

    A run that cannot read the database is reported and the watch goes on (the
    database may come back). A signal during a run cancels it: a run only reads (its
    snapshot's transaction rolls back), and on a large database a full one takes
    minutes, longer than a pod's grace period."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    full: Report | None = None
    full_started = 0.0  # loop time of the last full run's start
    while not stop.is_set():
        started = loop.time()
        since = None
        if full is not None and started - full_started < full_every_s:
            since = full.cutoff
        running = asyncio.ensure_future(run_once(since))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, *READ_ERRORS):
                await running
            return
        try:
            report = running.result()
        except READ_ERRORS as error:
            on_error(error)
            if metrics is not None:
                metrics.failed()
        else:
            if since is None:
                full, full_started = report, started
            else:
                assert full is not None
                report = combined(full, report)
            on_report(report)
            if metrics is not None:
                metrics.record(report, full=since is None, took_s=loop.time() - started)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await stop.wait()
