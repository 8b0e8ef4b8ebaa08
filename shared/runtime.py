"""Assembly of a service process: database, broker, outbox relay and HTTP side.

A service's `main.py` builds a `ServiceKit`, hands its routers and read routes to it,
and gets one ASGI app whose lifespan starts and stops everything in order.
"""

import asyncio
import contextlib
import gc
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import FrameType
from typing import Any

import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faststream._internal.endpoint.subscriber.utils import MultiLock
from faststream.kafka import KafkaRouter
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from shared.auth import TokenVerifier
from shared.broker import GroupJoined, make_broker, outbox_publisher, relay_producer
from shared.consumer import DeadLetters
from shared.db import Database
from shared.http import bearer_auth, health_routes
from shared.lag import ConsumerLag, subscriber_consumers
from shared.logs import configure_logging
from shared.outbox import OutboxRelay, RelayMetrics
from shared.saga_watch import OUTBOX_PROBES, Probe, SagaWatch
from shared.settings import ServiceSettings
from shared.tracing import Tracing

log = logging.getLogger(__name__)


class ServiceKit:
    """What every service process has, built once from its settings."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        # The process's CPU, memory and garbage collections beside the service's own.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.db = Database(
            settings.database_url,
            schema=settings.db_schema,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
        )
        self.broker = make_broker(settings, self.registry)
        # Traces (OTEL_* variables; off when they name no exporter): shared/tracing.py.
        self.tracing = Tracing.from_env(settings.service_name)
        self.dead_letters = DeadLetters(
            self.broker,
            service=settings.service_name,
            registry=self.registry,
            tracing=self.tracing,
            group=settings.group_id,
        )
        self._relay_metrics = RelayMetrics(self.registry)
        self._relay: OutboxRelay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._background: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Metrics that page: consumer lag on a timer (shared/lag.py).
        self.lag = ConsumerLag(
            self.registry,
            lambda: subscriber_consumers(self.broker.subscribers),
            interval_s=settings.metrics_watch_interval_s,
        )
        self.run_in_background("consumer-lag", self.lag.run)

    def run_in_background(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work()` while the service runs (started after the consumers, cancelled
        before them): a service's own loop, such as payout's reconciliation."""
        self._background.append((name, work))

    def watch_sagas(self, probes: Sequence[Probe]) -> None:
        """Export the service's saga states and its outbox backlog on a timer
        (shared/saga_watch.py)."""
        watch = SagaWatch(
            self.registry,
            lambda: self.db.pool,
            [*OUTBOX_PROBES, *probes],
            interval_s=self.settings.metrics_watch_interval_s,
        )
        self.run_in_background("saga-watch", watch.run)

    def include(self, *routers: KafkaRouter) -> None:
        for router in routers:
            self.broker.include_router(router)

    async def _ready(self) -> bool:
        return await self.broker.ping(timeout=2.0)

    async def _relay_running(self) -> bool:
        return self._relay_task is not None and not self._relay_task.done()

    async def _consuming(self) -> bool:
        """Every consumer has joined its group (so it fetches, or has nothing assigned)."""
        return bool(self.broker.running) and all(j.joined for j in self._memberships())

    async def _not_stopping(self) -> bool:
        return self._stopping is None

    def _memberships(self) -> list[GroupJoined]:
        # The listener each subscriber was given by `batch_subscription` (FastStream keeps
        # it as `_listener`; tests/unit/test_shutdown.py checks that it still does).
        found = (getattr(sub, "_listener", None) for sub in self.broker.subscribers)
        return [listener for listener in found if isinstance(listener, GroupJoined)]

    async def _connect(self, producer: AIOKafkaProducer) -> None:
        """Start the consumers and the relay's producer; a broker that cannot be reached
        or refuses the credentials stops the start-up with one clear line (never a hang:
        an orchestrator restarts the process and readiness never turns true)."""
        try:
            await self._start_consumers()
            await producer.start()
        except KafkaError as error:
            log.error(
                "cannot connect to Kafka at %s: %s (check KAFKA_BOOTSTRAP_SERVERS, "
                "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_*)",
                self.settings.kafka.describe(),
                error,
            )
            raise

    async def _start_consumers(self) -> None:
        """`broker.start()`, but its consumers join the group together.

        FastStream starts its subscribers one after another, and aiokafka's `start`
        returns only once the consumer has its assignment: each consumer's join was a
        rebalance of its own, which the others took part in at their next heartbeat, a
        chain of seven for the wallet (about 4 s of its start measured; see
        docs/operations.md, "Stopping and restarting a service"). Started together, their
        joins fall into one or two rebalances. The rest is what `KafkaBroker.start` does:
        connect, start the subscribers, then the publishers."""
        await self.broker.connect()
        await asyncio.gather(*(sub.start() for sub in self.broker.subscribers))
        for publisher in self.broker.publishers:
            await publisher.start()
        self.broker.running = True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the pool, start consumers and the relay; stop them in reverse order."""
        self._stopping = None
        await self.db.open()
        producer = relay_producer(self.settings)  # aiokafka wants the running loop
        self._producer = producer
        try:
            await self._connect(producer)
            relay = OutboxRelay(
                lambda: self.db.pool,
                schema=self.settings.db_schema,
                publish=outbox_publisher(producer),
                metrics=self._relay_metrics,
                listen=lambda: self.db.connect(purpose="outbox-listen"),
                batch_size=self.settings.relay_batch_size,
                poll_interval_s=self.settings.relay_poll_interval_s,
                tracing=self.tracing,
            )
            self._relay = relay
            if self.settings.relay_kick_after_commit:
                # What this process commits to its outbox, its relay publishes at once.
                self.db.after_commit = relay.kick
            self._relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
            self._tasks = [
                asyncio.create_task(work(), name=name) for name, work in self._background
            ]
            log.info("%s started", self.settings.service_name)
            yield
        finally:
            await self.stop()
            await self.db.close()

    def stop(self) -> "asyncio.Task[None]":
        """Stop gracefully (SIGTERM, or the end of `running`); idempotent, and readiness
        answers 503 from the first call on. In order: the service's own loops end; every
        consumer stops fetching and finishes the batch in hand (committing its offsets)
        before any of them leaves the group, so no batch's commit meets a rebalance that
        the others' leaving set off; the relay publishes what was committed; the
        producer flushes and closes. The database pool stays open (`running` closes it)."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop(), name="graceful-stop")
        return self._stopping

    async def _stop(self) -> None:
        started = time.monotonic()
        name = self.settings.service_name
        log.info("%s stopping: no new batches, finishing those in hand", name)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Consumers first, so nothing new is written while the relay drains.
        async with _took("finishing the batches in hand"):
            await self._finish_batches()
        async with _took("stopping the consumers (leaving the group)"):
            # FastStream's stop: every consumer leaves its group, its producer closes.
            await self._disconnect("the consumers (leaving their groups)", self.broker.stop())
        self.db.after_commit = None
        async with _took("draining the outbox relay"):
            await self._drain_relay()
        if self._producer is not None:
            async with _took("closing the relay's producer"):
                await self._disconnect("the relay's producer", self._producer.stop())
        # The last spans out to the exporter (a thread of the SDK's: off the loop).
        await asyncio.to_thread(self.tracing.shutdown)
        log.info("%s stopped in %.1fs", name, time.monotonic() - started)

    async def _finish_batches(self) -> None:
        """Stop every consumer's loop (`running` is what FastStream's loop and `consume`
        check) and wait, up to the batch timeout, until no batch is in hand; a batch still
        running then is cancelled (its transaction rolls back, its offsets stay), so that
        FastStream's own stop does not wait for it a second time."""
        subscribers = list(self.broker.subscribers)
        for sub in subscribers:
            sub.running = False
        timeout = self.settings.shutdown_batch_timeout_s
        locks = [(sub, sub.lock) for sub in subscribers if isinstance(sub.lock, MultiLock)]
        await asyncio.gather(*(lock.wait_release(timeout) for _, lock in locks if lock.qsize))
        late = [sub for sub, lock in locks if lock.qsize]
        cancelled: list[asyncio.Task[Any]] = []
        for sub in late:
            log.error(
                "%s: a batch still running after %.0fs is cancelled; it is processed again "
                "after the restart",
                ",".join(getattr(sub, "topic_names", ())),
                timeout,
            )
            tasks: list[asyncio.Task[Any]] = getattr(sub, "tasks", [])
            for task in tasks:
                task.cancel()
            cancelled += tasks
        await asyncio.gather(*cancelled, return_exceptions=True)

    async def _disconnect(self, what: str, closing: Coroutine[Any, Any, None]) -> None:
        """Close Kafka clients, bounded like every step of the stop. Closing stalled
        where nothing was left to lose: twice (once in CI, once in a benchmark) a stop
        ended exactly 30 s after LeaveGroup had succeeded, which matches asyncio's wait
        for a TLS peer's answer to close_notify while aiokafka closes its connections.
        What has not closed within the timeout is abandoned, and the stacks of the tasks
        waiting in aiokafka are logged (for the next time: where it waited). Every batch
        has been committed or rolled back by then; a member that did not leave is dropped
        by its group when its session times out (the others wait that long for its
        partitions). An error while closing is logged and the stop goes on."""
        timeout = self.settings.shutdown_disconnect_timeout_s
        task = asyncio.create_task(closing, name=f"disconnect {what}")
        await asyncio.wait({task}, timeout=timeout)
        if task.done():
            if (error := task.exception()) is not None:
                log.error("closing %s failed: %r", what, error)
            return
        stuck = [t for t in asyncio.all_tasks() if t is task or _awaits_kafka(t)]
        log.error(
            "%s had not closed after %.0fs; abandoned. Where it waited:\n%s",
            what,
            timeout,
            "\n".join(_stack(t) for t in stuck),
        )
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)

    async def _drain_relay(self) -> None:
        if self._relay is None or self._relay_task is None:
            return
        self._relay.stop()
        try:
            async with asyncio.timeout(self.settings.shutdown_relay_timeout_s):
                await asyncio.shield(self._relay_task)
        except TimeoutError:
            log.error(
                "outbox relay did not drain within %.0fs; what is left goes out after restart",
                self.settings.shutdown_relay_timeout_s,
            )
            self._relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay_task

    def http_app(self, routes: Sequence[BaseRoute] = ()) -> Starlette:
        """The service's ASGI app: read routes, health and metrics, lifespan = `running`.

        Every route needs a bearer token but an `OpenRoute` (shared/http.py); without a
        key to verify tokens (JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL) the service refuses to
        start."""
        tokens = TokenVerifier.from_settings(self.settings.auth)
        checks = {
            "database": self.db.ping,
            "kafka": self._ready,
            "consumers": self._consuming,
            "relay": self._relay_running,
            "running": self._not_stopping,  # false from SIGTERM on
        }

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            async with self.running():
                yield

        every = [*routes, *health_routes(self.registry, checks)]
        app = Starlette(routes=every, middleware=[bearer_auth(tokens, every)], lifespan=lifespan)
        app.state.service_kit = self
        return app


@contextlib.asynccontextmanager
async def _took(what: str) -> AsyncIterator[None]:
    """Log a step of the stop that took over a second (the grace period is finite)."""
    started = time.monotonic()
    yield
    if (took := time.monotonic() - started) > 1.0:
        log.warning("stopping: %s took %.1fs", what, took)


def _awaits_kafka(task: "asyncio.Task[Any]") -> bool:
    return any("aiokafka" in frame.f_code.co_filename for frame in task.get_stack())


def _stack(task: "asyncio.Task[Any]") -> str:
    text = io.StringIO()
    task.print_stack(limit=12, file=text)
    return text.getvalue()


GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""


def settle_heap() -> None:
    """Once the service has started: collect, freeze what is left, and collect the
    youngest generation less often.

    Most of a service's heap is what its start-up built (modules, FastStream's and
    pydantic's machinery, the pools), and it lives as long as the process. CPython's
    cyclic collector walks all of it at every full collection: under gift load the
    wallet's took about 75 ms each, the event loop stalled meanwhile, and they freed
    nearly nothing (reference counting frees a batch's objects). Frozen, start-up's
    objects are left out of every collection (about 8 ms each); collecting the youngest
    generation every 10,000 allocations instead of 700 lets more of a batch's objects go
    by reference count before a collection promotes them. docs/operations.md, "Garbage
    collection".
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


class _Server(uvicorn.Server):
    """uvicorn, but SIGTERM/SIGINT first stop the service (`ServiceKit.stop`) while the
    HTTP side still answers, so readiness says 503 during the drain; then uvicorn stops
    as usual (the lifespan's end finds the service stopped). A second signal stops at
    once, as plain uvicorn does."""

    def __init__(self, config: uvicorn.Config, kit: ServiceKit | None) -> None:
        super().__init__(config)
        self._kit = kit
        self._draining = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the lifespan: the service starts (or exits)
        settle_heap()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._kit is None or self._draining or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        kit = self._kit
        loop = asyncio.get_event_loop()

        def then_exit(_: object) -> None:
            super(_Server, self).handle_exit(sig, frame)

        # A signal handler runs between two bytecodes of the loop's thread: schedule.
        loop.call_soon_threadsafe(lambda: kit.stop().add_done_callback(then_exit))


def serve(app: Starlette, settings: ServiceSettings) -> None:
    """Run the app until SIGINT/SIGTERM: stop the service gracefully, then the HTTP side."""
    configure_logging(settings.log_level, settings.service_name, settings.log_format)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    kit = getattr(app.state, "service_kit", None)
    _Server(config, kit if isinstance(kit, ServiceKit) else None).run()
