"""Graceful stop without Kafka or PostgreSQL: the relay drains before it returns,
readiness waits for the consumers' groups and turns 503 once the stop began.

The end-to-end test under load is tests/e2e/test_graceful_shutdown.py."""

import asyncio
from typing import Any, ClassVar

import pytest
from faststream._internal.endpoint.subscriber.utils import MultiLock
from faststream.kafka import KafkaRouter
from prometheus_client import CollectorRegistry

from shared.broker import GroupJoined, batch_subscription
from shared.outbox import OutboxRelay, RelayMetrics
from shared.runtime import ServiceKit
from shared.settings import ServiceSettings


class _Settings(ServiceSettings):
    service_name: ClassVar[str] = "unit"


class ScriptedRelay(OutboxRelay):
    """A relay whose batches publish the given counts (an exception is raised), with no
    database behind it."""

    def __init__(self, *outcomes: int | Exception) -> None:
        super().__init__(lambda: None, schema="unit", publish=_nothing, metrics=_metrics())  # type: ignore[arg-type, return-value]
        self.outcomes = list(outcomes)
        self.batches = 0

    async def publish_batch(self) -> int:
        self.batches += 1
        outcome = self.outcomes.pop(0) if self.outcomes else 0
        if isinstance(outcome, Exception):
            raise outcome
        self._more = outcome == self._batch_size
        return outcome

    async def _present_if_due(self) -> None:
        pass

    def _chores_if_due(self) -> None:
        pass

    async def _absent(self) -> None:
        pass


async def _nothing(_: Any) -> None:
    pass


def _metrics() -> RelayMetrics:
    return RelayMetrics(CollectorRegistry())


async def test_a_stopped_relay_publishes_what_is_left_then_returns() -> None:
    relay = ScriptedRelay(0)  # idle: waiting for a kick or its poll
    running = asyncio.create_task(relay.run())
    await asyncio.sleep(0.05)
    relay.outcomes = [500, 500, 7, 0]  # the consumers' last commits
    relay.stop()
    async with asyncio.timeout(2.0):
        await running
    assert relay.batches == 5  # the idle one, then until a batch found nothing


async def test_a_relay_that_cannot_publish_keeps_trying_until_cancelled() -> None:
    relay = ScriptedRelay()
    relay._poll_interval_s = 0.01
    relay.outcomes = [ConnectionError("Kafka away")] * 1000
    relay.stop()
    running = asyncio.create_task(relay.run())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await asyncio.shield(running)
    assert relay.batches > 3 and not running.done()
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


def _kit() -> ServiceKit:
    settings = _Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    kit = ServiceKit(settings)
    router = KafkaRouter()
    for topic in ("unit.a", "unit.b"):

        @router.subscriber(topic, **batch_subscription(settings))
        async def handle(_: Any) -> None:
            pass

    kit.include(router)
    return kit


async def test_readiness_waits_until_every_consumer_joined_its_group() -> None:
    kit = _kit()
    joined = kit._memberships()
    # FastStream keeps each subscriber's listener as `_listener`: if it stopped doing so
    # readiness would never wait for the group (and this would find none).
    assert len(joined) == 2 and all(isinstance(j, GroupJoined) for j in joined)
    kit.broker.running = True
    assert not await kit._consuming()
    await joined[0].on_partitions_assigned(set())
    assert not await kit._consuming()
    await joined[1].on_partitions_assigned(set())  # nothing assigned: more replicas than partitions
    assert await kit._consuming()


async def test_readiness_turns_false_when_the_stop_begins_and_the_stop_is_done_once() -> None:
    kit = _kit()
    assert await kit._not_stopping()
    first = kit.stop()
    assert not await kit._not_stopping()
    assert kit.stop() is first
    async with asyncio.timeout(5.0):
        await first
    assert all(not sub.running for sub in kit.broker.subscribers)


async def test_a_batch_past_the_timeout_is_cancelled_once_not_waited_for_twice() -> None:
    kit = _kit()
    kit.settings.shutdown_batch_timeout_s = 0.2
    sub = next(iter(kit.broker.subscribers))
    lock = MultiLock()
    sub.lock = lock
    released = asyncio.Event()

    async def stuck_batch() -> None:
        lock.acquire()  # as FastStream's `process_message` holds it around a batch
        try:
            await asyncio.sleep(60)
        finally:
            lock.release()
            released.set()

    task = asyncio.create_task(stuck_batch())
    sub.tasks.append(task)  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(5.0):
        await kit.stop()
    assert released.is_set() and task.cancelled()
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_consumers_that_do_not_close_in_time_are_abandoned_and_their_stack_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kit = _kit()
    kit.settings.shutdown_disconnect_timeout_s = 0.2
    cancelled = asyncio.Event()

    async def a_tls_close_the_broker_does_not_answer() -> None:
        try:
            await asyncio.sleep(60)  # as asyncio waits 30 s for the close_notify
        finally:
            cancelled.set()

    async def stop(*_: Any) -> None:
        await a_tls_close_the_broker_does_not_answer()

    kit.broker.stop = stop  # type: ignore[method-assign, assignment]
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(5.0):
        await kit.stop()
    assert asyncio.get_running_loop().time() - started < 2.0
    assert cancelled.is_set()
    [abandoned] = [r for r in caplog.records if "had not closed" in r.getMessage()]
    assert abandoned.levelname == "ERROR"
    assert "a_tls_close_the_broker_does_not_answer" in abandoned.getMessage()  # its stack
