"""What the benchmarks share: open-loop paced publishing, a listening consumer positioned
at "latest" in a group of its own, outcome latencies and their percentiles.

A request is `(key, value, request_id)`; every outcome event names the request_id it
answers, so its latency is the time from publishing the request to receiving the event.
"""

import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from devstack.instances import Instance
from devstack.procs import live_pid
from shared.kafka_client import KafkaClientSettings

Request = tuple[str, bytes, str]
"""(Kafka key, JSON value, request_id) of one request to publish."""

Handler = Callable[[str, dict[str, Any], float], None]
"""Called with (topic, decoded value, receive time) for every record a consumer reads."""


@dataclass
class Published:
    """When each request was published (time.perf_counter), by request_id."""

    sent_at: dict[str, float] = field(default_factory=dict)
    first_sent: float = 0.0


@dataclass
class Outcomes:
    """Latencies from publishing a request to one kind of outcome event, first one only."""

    latencies: dict[str, float] = field(default_factory=dict)
    last_at: float = 0.0

    def record(self, request_id: str | None, published: Published, now: float) -> bool:
        """Record an outcome of one of our requests; False for others' and for repeats."""
        if request_id is None or request_id in self.latencies:
            return False
        sent = published.sent_at.get(request_id)
        if sent is None:
            return False
        self.latencies[request_id] = now - sent
        self.last_at = now
        return True

    def __len__(self) -> int:
        return len(self.latencies)


def run_id() -> str:
    """A short id that makes this run's request and account ids unique."""
    return uuid.uuid4().hex[:6]


def producer(kafka: KafkaClientSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(**kafka.client_options(), linger_ms=5, acks="all")


async def publish(
    producer: AIOKafkaProducer,
    topic: str,
    batch: list[Request],
    published: Published,
    rate: float,
) -> None:
    """Publish `batch` open-loop at `rate` requests/s (0 = as fast as possible)."""
    published.first_sent = time.perf_counter()
    pending = []
    for i, (key, value, request_id) in enumerate(batch):
        if rate:
            # Open-loop pacing: request i is due at i / rate seconds after the start.
            delay = published.first_sent + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        published.sent_at[request_id] = time.perf_counter()
        pending.append(await producer.send(topic, value, key=key.encode()))
    await asyncio.gather(*pending)


async def listening(kafka: KafkaClientSettings, *topic_names: str) -> AIOKafkaConsumer:
    """A consumer of `topic_names` in a group of its own, reading only what comes next."""
    consumer = AIOKafkaConsumer(
        *topic_names,
        **kafka.client_options(),
        group_id=f"app-bench-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
        enable_auto_commit=False,
        max_poll_records=5000,
    )
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    for partition in consumer.assignment():
        await consumer.position(partition)  # pin "latest" before anything is published
    return consumer


async def consume(consumer: AIOKafkaConsumer, handle: Handler, done: Callable[[], bool]) -> None:
    """Hand every record to `handle` until `done()`."""
    while not done():
        for records in (await consumer.getmany(timeout_ms=200)).values():
            now = time.perf_counter()
            for record in records:
                handle(record.topic, json.loads(record.value), now)


async def finished(task: asyncio.Task[None], seconds: float) -> bool:
    """Wait for `task`; False (and the task cancelled) after `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            await task
    except TimeoutError:
        return False
    return True


@dataclass(frozen=True)
class Percentiles:
    """Latency percentiles in milliseconds."""

    p50: float
    p95: float
    p99: float
    max: float


def percentiles(latencies: Iterable[float]) -> Percentiles:
    """p50 / p95 / p99 / max of `latencies` (seconds), in milliseconds."""
    ms = sorted(latency * 1000 for latency in latencies)
    if len(ms) < 2:
        ms = ms * 2  # quantiles needs two points; one latency is every percentile
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return Percentiles(p50=q[49], p95=q[94], p99=q[98], max=ms[-1])


def latency_line(label: str, latencies: Iterable[float]) -> str:
    """`label p50/p95/p99: a / b / c ms  (max d ms)`, or `label: none` without any."""
    latencies = list(latencies)
    if not latencies:
        return f"{label}: none"
    p = percentiles(latencies)
    return f"{label} p50/p95/p99: {p.p50:.0f} / {p.p95:.0f} / {p.p99:.0f} ms  (max {p.max:.0f} ms)"


def services_cpu(instance: Instance, *names: str) -> dict[str, float]:
    """CPU seconds (user + system) each named service of `instance` has used so far, all
    its running replicas together (`wallet.pid`, `wallet-1.pid`, ...), from /proc; a
    service this machine does not run (or not under devstack) is left out."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name in names:
        for pid_file in (instance.run / f"{name}.pid", *instance.run.glob(f"{name}-*.pid")):
            pid = live_pid(pid_file)
            if pid is None:
                continue
            try:
                # utime and stime: fields 14 and 15, counted after the command's closing paren
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat.rpartition(")")[2].split()
            except OSError:
                continue
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def cpu_line(cpu: dict[str, float], count: int) -> str:
    """`CPU per gift:     gifting 300 µs, wallet 280 µs` (what each process spent)."""
    per = ", ".join(f"{name} {seconds / count * 1e6:.0f} µs" for name, seconds in cpu.items())
    return f"CPU per gift:     {per or 'unknown'}"
