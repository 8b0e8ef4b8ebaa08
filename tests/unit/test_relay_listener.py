"""The relay's LISTEN connection is replaced whenever it is lost, however it is lost."""

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from shared.outbox import OutboxRelay, RelayMetrics, channel
from tests.support import eventually


class FakeConnection:
    """What the relay uses of an asyncpg connection to LISTEN on."""

    def __init__(self, *, answers: bool = True) -> None:
        self.answers = answers
        self.closed = False
        self.channels: list[str] = []
        self.on_termination: list[Callable[[Any], object]] = []

    async def add_listener(self, name: str, _: object) -> None:
        self.channels.append(name)

    def add_termination_listener(self, callback: Callable[[Any], object]) -> None:
        self.on_termination.append(callback)

    def is_closed(self) -> bool:
        return self.closed

    async def execute(self, query: str, *, timeout: float) -> str:  # noqa: ASYNC109 (asyncpg's)
        if not self.answers:  # a half-open connection: the query never comes back
            await asyncio.sleep(timeout)
            raise TimeoutError
        return "SELECT 1"

    async def close(self, *, timeout: float) -> None:  # noqa: ASYNC109 (asyncpg's)
        self.closed = True

    def server_closed(self) -> None:
        """As asyncpg reports a socket the server closed."""
        self.closed = True
        for callback in self.on_termination:
            callback(self)


class Connections:
    """Hands out the given connections in turn; an exception in the list is raised."""

    def __init__(self, *outcomes: FakeConnection | Exception) -> None:
        self.outcomes = list(outcomes)
        self.opened: list[FakeConnection] = []

    async def __call__(self) -> asyncpg.Connection:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        self.opened.append(outcome)
        return outcome  # type: ignore[return-value]


def no_pool() -> asyncpg.Pool:
    raise RuntimeError("these tests look at the LISTEN connection only")


def relay(connect: Connections, registry: CollectorRegistry) -> OutboxRelay:
    async def publish(*_: object) -> Any:
        raise AssertionError("nothing to publish")

    made = OutboxRelay(
        no_pool,
        schema="wallet",
        publish=publish,
        metrics=RelayMetrics(registry),
        listen=connect,
        poll_interval_s=60.0,
    )
    made.LISTEN_CHECK_EVERY_S = 0.01
    made.LISTEN_CHECK_TIMEOUT_S = 0.01
    return made


async def running(made: OutboxRelay) -> asyncio.Task[None]:
    return asyncio.create_task(made.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def sample(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


async def test_a_connection_the_server_closed_is_replaced_and_listens_again() -> None:
    first, second = FakeConnection(), FakeConnection()
    registry = CollectorRegistry()
    connect = Connections(first, second)
    task = await running(relay(connect, registry))
    try:
        await eventually(lambda: _true(first.channels), timeout_s=2)
        first.server_closed()
        await eventually(lambda: _true(second.channels), timeout_s=2)
    finally:
        await stop(task)

    assert first.channels == second.channels == [channel("wallet")]
    assert sample(registry, "coinstream_outbox_listener_reconnects_total") == 1.0
    assert second.closed  # closed when the relay stopped


async def test_a_connection_that_stops_answering_is_replaced() -> None:
    silent, healthy = FakeConnection(answers=False), FakeConnection()
    registry = CollectorRegistry()
    task = await running(relay(Connections(silent, healthy), registry))
    try:
        await eventually(lambda: _true(healthy.channels), timeout_s=2)
        listening = sample(registry, "coinstream_outbox_listening")
    finally:
        await stop(task)

    assert silent.closed
    assert listening == 1.0


async def test_while_the_server_refuses_connections_the_relay_keeps_trying() -> None:
    refused = ConnectionRefusedError("server down")
    registry = CollectorRegistry()
    healthy = FakeConnection()
    connect = Connections(refused, refused, refused, healthy)
    task = await running(relay(connect, registry))
    try:
        await eventually(lambda: _true(healthy.channels), timeout_s=5)
    finally:
        await stop(task)

    assert connect.opened == [healthy]


async def _true(value: object) -> bool:
    return bool(value)


async def test_a_relay_cancelled_as_it_is_woken_stops() -> None:
    """A cancellation in the same turn of the loop as a wake-up ends the relay.

    `asyncio.wait_for` on Python 3.11 returns the finished wait instead of raising the
    cancellation (fixed in 3.12): the relay waited on, and a service never stopped."""
    made = relay(Connections(), CollectorRegistry())
    made.CONTENDED_RETRY_S = 60.0
    task = asyncio.create_task(made._relay_forever())
    await asyncio.sleep(0.05)  # its batch failed (no pool): it waits for a wake-up
    made.kick()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    if not done:
        await stop(task)
        raise AssertionError("the relay went on after it was cancelled")
    assert task.cancelled()
