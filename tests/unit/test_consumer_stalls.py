"""Stalls: backoff and the stuck age follow each partition's position."""

from typing import Any

import pytest
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from shared import consumer
from shared.consumer import Stalls


def record(partition: int, offset: int, topic: str = "t") -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic, partition, offset, 0, 0, b"k", b"{}", None, 1, 2, [])


class Clock:
    now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(consumer, "time", clock)
    monkeypatch.setattr("shared.retry.random.uniform", lambda low, high: high)
    return clock


def stuck(registry: CollectorRegistry, topic: str = "t") -> float | None:
    return registry.get_sample_value("coinstream_consumer_stuck_seconds", {"topic": topic})


def test_waits_double_while_the_same_offsets_fail(clock: Clock) -> None:
    stalls = Stalls(CollectorRegistry())
    batch = [record(0, 5), record(0, 6)]
    assert [stalls.failed(batch) for _ in range(4)] == [0.05, 0.1, 0.2, 0.4]
    assert [stalls.failed(batch) for _ in range(4)][-1] == 5.0  # capped
    stalls.succeeded(batch)
    assert stalls.failed([record(0, 7)]) == 0.05  # a new failure starts over


def test_a_partition_stays_stuck_while_others_move_on(clock: Clock) -> None:
    registry = CollectorRegistry()
    stalls = Stalls(registry)
    stalls.succeeded([record(0, 1)])
    assert stuck(registry) == 0.0  # known and not stuck

    stalls.failed([record(0, 5), record(1, 9)])
    clock.now += 30
    stalls.succeeded([record(1, 9)])  # partition 1 alone was fetched and went through
    assert stuck(registry) == 30.0
    assert stalls.failed([record(0, 5)]) == 0.1  # the second failure in a row there

    clock.now += 10
    stalls.failed([record(0, 6)])  # it moved on and is stuck further along
    assert stuck(registry) == 0.0
    clock.now += 2
    assert stuck(registry) == 2.0
    stalls.succeeded([record(0, 6)])
    assert stuck(registry) == 0.0
    assert registry.get_sample_value("coinstream_consumer_retries_total", {"topic": "t"}) == 3
