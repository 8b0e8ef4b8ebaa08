"""Where a service's CPU goes, from a py-spy profile in raw (collapsed stack) form.

Record a running service under load, then summarise:

    py-spy record --pid PID --format raw -o /tmp/gifting.txt -d 40 --nonblocking
    python -m benchmarks.pyspy_report /tmp/gifting.txt

py-spy counts only samples where the process was running Python (idle is left out), so
the percentages are shares of the process's busy time. Two views:

- by kind: each sample goes to the first kind of work found walking up from the
  innermost frame (so murmur2 called by the relay counts as the partitioner, a dataclass
  `__init__` in the wallet's domain as dataclass machinery). The leaf `Runner.run` is the
  event loop's own C code (uvloop: polling, socket reads and writes, callbacks), which has
  no Python frame of its own;
- inclusive: the share of samples under a named function (these overlap).
"""

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("Kafka partitioner (pure-Python murmur2)", re.compile(r"aiokafka/partitioner\.py")),
    ("event ids (uuid4)", re.compile(r"\(uuid\.py|new_event_id")),
    ("metrics (prometheus_client)", re.compile(r"prometheus_client/")),
    ("logging", re.compile(r"\(logging/|structlog/")),
    ("pydantic serialise (model_dump_json)", re.compile(r"model_dump")),
    ("pydantic validate / construct", re.compile(r"model_validate|BaseModel\.__init__")),
    ("stdlib json", re.compile(r"\(json/")),
    ("asyncpg (queries, protocol)", re.compile(r"\(asyncpg/")),
    ("aiokafka producer", re.compile(r"aiokafka/producer/")),
    ("aiokafka consumer (fetch, heartbeat, commit)", re.compile(r"aiokafka/consumer/")),
    ("aiokafka client and protocol", re.compile(r"\(aiokafka/")),
    ("socket writes (asyncio streams, TLS)", re.compile(r"asyncio/streams\.py|\(ssl\.py")),
    ("dataclass __init__/__eq__/__hash__, replace", re.compile(r"__create_fn__|dataclasses\.py")),
    ("isinstance on ABCs", re.compile(r"<frozen abc>")),
    ("services' own code (domain, service, repository)", re.compile(r"\(services/")),
    ("shared kit (outbox relay, consumer, db)", re.compile(r"\(shared/")),
    ("FastStream / fast_depends wrappers", re.compile(r"\(faststream/|\(fast_depends/")),
    ("event loop (uvloop C code: poll, socket I/O)", re.compile(r"^Runner\.run ")),
    ("threads (anyio workers, executors)", re.compile(r"\(threading\.py|\(queue\.py")),
]

INCLUSIVE: list[tuple[str, list[re.Pattern[str]]]] = [
    (name, [re.compile(p) for p in patterns])
    for name, *patterns in [
        ("FastStream consume loop (everything consumed)", r"_run_consume_loop"),
        ("  shared.consumer.process (the services' batch work)", r"^process \(shared"),
        ("  DeadLetters.sort (decode + validate)", r"DeadLetters\.sort"),
        ("  outbox.enqueue (serialise + insert)", r"^enqueue \(shared/outbox"),
        ("outbox relay (claim, publish, mark, metrics)", r"OutboxRelay\.run"),
        ("  relay claim query", r"OutboxRelay\._claim"),
        ("  relay publish (outbox_publisher)", r"outbox_publisher"),
        ("    of which murmur2", r"outbox_publisher", r"murmur2"),
        ("  relay mark query", r"OutboxRelay\.publish_batch", r"^Connection\.execute \(asyncpg"),
        (
            "  relay lag histogram (one observe per row)",
            r"OutboxRelay\.publish_batch",
            r"Histogram",
        ),
        ("asyncpg, all calls", r"\(asyncpg/"),
        ("aiokafka AIOKafkaConnection.send (requests out)", r"AIOKafkaConnection\.send"),
        ("consumer heartbeats", r"_heartbeat_routine"),
        ("consumer offset commits", r"_do_commit_offsets|commit_offsets"),
        ("event ids (uuid4 in new_event_id)", r"new_event_id"),
        ("metrics (prometheus_client)", r"prometheus_client/"),
        ("logging", r"\(logging/"),
    ]
]


def samples(path: Path) -> Iterable[tuple[list[str], int]]:
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield stack.split(";"), int(count)


def kind_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in KINDS:
            if pattern.search(frame):
                return name
    return "other"


def summarise(path: Path) -> str:
    by_kind: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in samples(path):
        total += count
        by_kind[kind_of(frames)] += count
        for name, patterns in INCLUSIVE:
            if all(any(p.search(frame) for frame in frames) for p in patterns):
                inclusive[name] += count
    out = [f"{path}: {total} busy samples", "by kind (innermost first, sums to 100%):"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_kind.most_common()]
    out.append("inclusive (overlapping):")
    out += [f"  {100 * inclusive[name] / total:5.1f}%  {name}" for name, _ in INCLUSIVE]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", type=Path, help="py-spy --format raw output")
    for path in parser.parse_args().profiles:
        print(summarise(path))
        print()


if __name__ == "__main__":
    main()
