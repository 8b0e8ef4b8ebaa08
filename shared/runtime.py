"""Assembly of a service process: database, broker, outbox relay and HTTP side.

A service's `main.py` builds a `ServiceKit`, hands its routers and read routes to it,
and gets one ASGI app whose lifespan starts and stops everything in order.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaRouter
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from shared.auth import TokenVerifier
from shared.broker import make_broker, outbox_publisher, relay_producer
from shared.consumer import DeadLetters
from shared.db import Database
from shared.http import bearer_auth, health_routes
from shared.outbox import OutboxRelay, RelayMetrics
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


class ServiceKit:
    """What every service process has, built once from its settings."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.db = Database(
            settings.database_url,
            schema=settings.db_schema,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
        )
        self.broker = make_broker(settings, self.registry)
        self.dead_letters = DeadLetters(
            self.broker, service=settings.service_name, registry=self.registry
        )
        self._relay_metrics = RelayMetrics(self.registry)
        self._relay_task: asyncio.Task[None] | None = None
        self._background: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def run_in_background(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work()` while the service runs (started after the consumers, cancelled
        before them): a service's own loop, such as payout's reconciliation."""
        self._background.append((name, work))

    def include(self, *routers: KafkaRouter) -> None:
        for router in routers:
            self.broker.include_router(router)

    async def _ready(self) -> bool:
        return await self.broker.ping(timeout=2.0)

    async def _relay_running(self) -> bool:
        return self._relay_task is not None and not self._relay_task.done()

    async def _connect(self, producer: AIOKafkaProducer) -> None:
        """Start the consumers and the relay's producer; a broker that cannot be reached
        or refuses the credentials stops the start-up with one clear line (never a hang:
        an orchestrator restarts the process and readiness never turns true)."""
        try:
            await self.broker.start()
            await producer.start()
        except KafkaError as error:
            log.error(
                "cannot connect to Kafka at %s: %s (check KAFKA_BOOTSTRAP_SERVERS, "
                "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_*)",
                self.settings.kafka.describe(),
                error,
            )
            raise

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the pool, start consumers and the relay; stop them in reverse order."""
        await self.db.open()
        producer = relay_producer(self.settings)  # aiokafka wants the running loop
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
            )
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
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            # Consumers first, so nothing new is written while the relay drains.
            await self.broker.stop()
            self.db.after_commit = None
            if self._relay_task is not None:
                self._relay_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._relay_task
            await producer.stop()
            await self.db.close()

    def http_app(self, routes: Sequence[BaseRoute] = ()) -> Starlette:
        """The service's ASGI app: read routes, health and metrics, lifespan = `running`.

        Every route needs a bearer token but an `OpenRoute` (shared/http.py); without a
        key to verify tokens (JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL) the service refuses to
        start."""
        tokens = TokenVerifier.from_settings(self.settings.auth)
        checks = {"database": self.db.ping, "kafka": self._ready, "relay": self._relay_running}

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            async with self.running():
                yield

        every = [*routes, *health_routes(self.registry, checks)]
        return Starlette(routes=every, middleware=[bearer_auth(tokens, every)], lifespan=lifespan)


def configure_logging(level: str, service: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )


def serve(app: Starlette, settings: ServiceSettings) -> None:
    """Run the app until SIGINT/SIGTERM; uvicorn drives the lifespan (graceful stop)."""
    configure_logging(settings.log_level, settings.service_name)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
