"""Saga states that page, read from the service's own schema on a timer.

Each service names a few `Probe`s (services/*/watch.py): one SQL query each, returning
one number (gifts pending longer than the limit, payouts in doubt, holds past their
deadline...). `SagaWatch.run` reads them all every METRICS_WATCH_INTERVAL_S in one
read-only transaction with a short statement timeout, off the hot path; every query
has an index to use (or reads a table that stays small). A scrape only returns the last
values read.

Every replica of a service reads the same rows and exports the same values: aggregate
these gauges with `max`, never `sum` (deploy/prometheus/coinstream-rules.yaml does).
`coinstream_saga_watch_last_success_timestamp_seconds` says when the values were last
read; `coinstream_saga_watch_errors_total` counts ticks that could not read them.
"""

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.retry import every

STATEMENT_TIMEOUT_MS: Final = 5000


@dataclass(frozen=True)
class Probe:
    """One gauge: `sql` returns one number (NULL reads as 0), `args` are its parameters."""

    name: str
    help: str
    sql: str
    args: tuple[Any, ...] = ()


class SagaWatch(Collector):
    """Reads `probes` on a timer and exports the last values as gauges."""

    def __init__(
        self,
        registry: CollectorRegistry,
        pool: Callable[[], asyncpg.Pool],
        probes: Sequence[Probe],
        *,
        interval_s: float,
    ) -> None:
        self.interval_s = interval_s
        self._pool = pool
        self._probes = tuple(probes)
        self._values: dict[str, float] = {}
        self._read_at: float | None = None
        self._errors = Counter(
            "coinstream_saga_watch_errors",
            "Ticks of the saga-state watch that could not read the database",
            registry=registry,
        )
        registry.register(self)

    async def run(self) -> None:
        """Read every interval until cancelled; a failed read (the database away) is
        counted and logged, and the next tick tries again."""
        await every(
            self.sample,
            interval_s=self.interval_s,
            what="saga watch: cannot read",
            failed=self._errors.inc,
        )

    async def sample(self) -> None:
        values: dict[str, float] = {}
        async with self._pool().acquire() as conn, conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            for probe in self._probes:
                value = await conn.fetchval(probe.sql, *probe.args)
                values[probe.name] = float(value or 0)
        self._values = values
        self._read_at = time.time()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for probe in self._probes:
            gauge = GaugeMetricFamily(probe.name, probe.help)
            if probe.name in self._values:
                gauge.add_metric([], self._values[probe.name])
            yield gauge
        read = GaugeMetricFamily(
            "coinstream_saga_watch_last_success_timestamp_seconds",
            "When the saga-state gauges were last read (Unix time)",
        )
        if self._read_at is not None:
            read.add_metric([], self._read_at)
        yield read


def older_than(column: str) -> str:
    """SQL: `column` is older than $1 seconds."""
    return f"{column} < now() - make_interval(secs => $1)"


def age_of_oldest(column: str) -> str:
    """SQL: seconds since the smallest `column` of the rows selected (NULL without rows)."""
    return f"extract(epoch FROM now() - min({column}))"


# Every service: events committed to the outbox and not yet published (a relay that does
# not publish). The outbox holds only what waits (kit-0004): a scan of it is short.
OUTBOX_PROBES: Final = (
    Probe(
        "coinstream_outbox_unpublished",
        "Events committed to the outbox and not yet published to Kafka",
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
    ),
    Probe(
        "coinstream_outbox_oldest_unpublished_seconds",
        "Age of the oldest event not yet published (0: none)",
        f"SELECT {age_of_oldest('created_at')} FROM outbox WHERE published_at IS NULL",
    ),
)
