"""Consumer lag per topic and partition, and the age of the oldest unprocessed record.

Measured on a timer (`ConsumerLag.run`, every METRICS_WATCH_INTERVAL_S), never per
record: for the partitions each of the process's consumers holds, the committed offset
(what was processed: offsets are committed after a batch's transaction) against the
partition's end offset (its high watermark). Two requests per partition and tick to the
brokers, whatever the traffic.

The age is estimated from the same samples: a tick that first sees the end offset pass
E means the records below E existed then. The oldest unprocessed record sits at the
committed offset C; the first sample whose end offset was above C saw it, so it is at
least that old (a lower bound, accurate to one interval). No record is read.

Metrics (one series per partition this replica holds; a partition handed to another
replica disappears from this one's): `coinstream_consumer_lag{topic,partition}` (records
not yet committed), `coinstream_consumer_oldest_unprocessed_seconds{topic,partition}`
(0 when the lag is 0), `coinstream_consumer_lag_sampled_timestamp_seconds` (the last
tick that read every partition). Across replicas each partition has one owner: `sum by
(topic)` is the topic's lag; during a rebalance two may report one partition for a tick,
which `max by (topic, partition)` hides.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.retry import every

# Samples kept per partition while it lags; beyond, the newer ones are thinned (the age
# stays a lower bound, only coarser).
MAX_SAMPLES: Final = 256
REQUEST_TIMEOUT_S: Final = 5.0


class Backlog:
    """One partition's unprocessed range over time: (end offset, first seen) samples."""

    def __init__(self) -> None:
        self._samples: deque[tuple[int, float]] = deque()

    def observe(self, committed: int, end: int, now: float) -> tuple[int, float]:
        """Record a tick; returns (lag in records, age of the oldest unprocessed record)."""
        if self._samples and end < self._samples[-1][0]:
            self._samples.clear()  # the partition was truncated or recreated
        if not self._samples or end > self._samples[-1][0]:
            self._samples.append((end, now))
            if len(self._samples) > MAX_SAMPLES:
                del self._samples[len(self._samples) // 2]
        while self._samples and self._samples[0][0] <= committed:
            self._samples.popleft()
        lag = max(end - committed, 0)
        if lag == 0 or not self._samples:
            return lag, 0.0
        return lag, now - self._samples[0][1]


class ConsumerLag(Collector):
    """Samples the lag of the consumers `consumers()` returns; a Prometheus collector."""

    def __init__(
        self,
        registry: CollectorRegistry,
        consumers: Callable[[], Iterable[AIOKafkaConsumer]],
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self._consumers = consumers
        self._clock = clock
        self._backlogs: dict[tuple[str, int], Backlog] = {}
        self._values: dict[tuple[str, int], tuple[int, float]] = {}
        self._sampled_at: float | None = None
        registry.register(self)

    async def run(self) -> None:
        """Sample every interval until cancelled; a failed tick (the brokers away) is
        logged and the next one tries again."""
        await every(
            self.sample, interval_s=self.interval_s, what="consumer lag: cannot read offsets"
        )

    async def sample(self) -> None:
        values: dict[tuple[str, int], tuple[int, float]] = {}
        for consumer in list(self._consumers()):
            assigned = sorted(consumer.assignment())
            if not assigned:
                continue
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                positions = await _positions(consumer, assigned)
            now = self._clock()
            for tp, (committed, end) in positions.items():
                key = (tp.topic, tp.partition)
                backlog = self._backlogs.setdefault(key, Backlog())
                values[key] = backlog.observe(committed, end, now)
        for gone in self._backlogs.keys() - values.keys():  # revoked: another replica's now
            del self._backlogs[gone]
        self._values = values
        self._sampled_at = time.time()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "coinstream_consumer_lag",
            "Records of the partition not yet processed (end offset - committed offset)",
            labels=["topic", "partition"],
        )
        age = GaugeMetricFamily(
            "coinstream_consumer_oldest_unprocessed_seconds",
            "Age of the partition's oldest unprocessed record (a lower bound, to one "
            "sampling interval; 0 without lag)",
            labels=["topic", "partition"],
        )
        for (topic, partition), (records, seconds) in sorted(self._values.items()):
            lag.add_metric([topic, str(partition)], records)
            age.add_metric([topic, str(partition)], seconds)
        yield lag
        yield age
        sampled = GaugeMetricFamily(
            "coinstream_consumer_lag_sampled_timestamp_seconds",
            "When the consumer lag was last read (Unix time; absent before the first read)",
        )
        if self._sampled_at is not None:
            sampled.add_metric([], self._sampled_at)
        yield sampled


async def _positions(
    consumer: AIOKafkaConsumer, assigned: list[TopicPartition]
) -> dict[TopicPartition, tuple[int, int]]:
    """(committed, end) per partition; a partition never committed starts at its first
    offset (the services' auto_offset_reset is `earliest`)."""
    ends: dict[TopicPartition, int] = await consumer.end_offsets(assigned)
    committed: list[int | None] = list(
        await asyncio.gather(*(consumer.committed(tp) for tp in assigned))
    )
    missing = [tp for tp, offset in zip(assigned, committed, strict=True) if offset is None]
    starts: dict[TopicPartition, int] = await consumer.beginning_offsets(missing) if missing else {}
    return {
        tp: (offset if offset is not None else starts[tp], ends[tp])
        for tp, offset in zip(assigned, committed, strict=True)
    }


def subscriber_consumers(subscribers: Iterable[Any]) -> list[AIOKafkaConsumer]:
    """The aiokafka consumers of a FastStream broker's running subscribers."""
    found = (getattr(sub, "consumer", None) for sub in subscribers)
    return [consumer for consumer in found if isinstance(consumer, AIOKafkaConsumer)]
