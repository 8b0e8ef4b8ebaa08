"""Benchmark: the outbox relay alone on a running stack (`make up`), not a test.

Fills the outbox of a scratch schema with N ready events for K keys, then lets R relays
(in this process, each with its own producer and pool) publish them to a topic of six
partitions, and prints records/s and this process's CPU per record. `--publisher send`
publishes the way the relay did before partition batches (one `producer.send()` per
record), to compare on the same machine in the same sitting. `--processes P` runs the
R relays in each of P processes of their own, as replicas would (CPU is then theirs).
The schema is dropped at the end. Run:
`python -m benchmarks.relay --count 50000 --relays 2 --publisher batch`.
"""

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import uvloop
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from devstack.instances import get_instance, stack_endpoints
from shared import outbox
from shared.broker import outbox_publisher, relay_producer
from shared.db import Database
from shared.kafka_admin import ensure_topics
from shared.migrations import KIT_MIGRATIONS
from shared.settings import ServiceSettings

TOPIC = "bench.relay"
PARTITIONS = 6


class _Settings(ServiceSettings):
    service_name = "bench"


def one_send_per_record(producer: AIOKafkaProducer) -> outbox.Publish:
    """The relay's publisher before partition batches, for comparison."""

    async def publish(records: Sequence[outbox.OutboxRecord]) -> None:
        sent = [
            await producer.send(
                r.topic,
                r.value,
                key=r.key,
                headers=[("content-type", b"application/json"), ("event_id", r.event_id.encode())],
            )
            for r in records
        ]
        await asyncio.gather(*sent)

    return publish


async def fill(conn: asyncpg.Connection, count: int, keys: int) -> None:
    await conn.execute(
        """
        INSERT INTO outbox (topic, key, event_id, payload)
        SELECT $1, 'user-' || (i % $3), 'evt-' || i,
               convert_to(json_build_object('seq', i, 'user_id', 'user-' || (i % $3),
                                            'coins', 70)::text, 'UTF8')
        FROM generate_series(1, $2) AS i
        """,
        TOPIC,
        count,
        keys,
    )


async def drained(conn: asyncpg.Connection) -> None:
    while True:
        if not await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            return
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> None:
    endpoints = stack_endpoints(get_instance("default"))
    admin = endpoints.database()
    schema = f"bench_relay_{uuid.uuid4().hex[:8]}"
    await ensure_topics(
        endpoints.kafka(), partitions=PARTITIONS, replication_factor=1, topics=[TOPIC]
    )
    conn = await asyncpg.connect(admin)
    await conn.execute(f"CREATE SCHEMA {schema}; SET search_path = {schema}")
    try:
        for sql in sorted(KIT_MIGRATIONS.glob("*.sql")):
            await conn.execute(sql.read_text())
        await fill(conn, args.count, args.keys)
        await conn.execute("ANALYZE outbox")
        if args.processes > 1:
            took, cpu, batches = await relay_in_processes(args, schema, conn)
        else:
            took, cpu, batches = await relay_all(args, endpoints, admin, schema, conn)
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
    print(
        f"relays:     {args.relays} in each of {args.processes} process(es) "
        f"({args.publisher} publisher, batches up to {args.batch_size})"
    )
    print(f"records:    {args.count} for {args.keys} keys, {PARTITIONS} partitions")
    print(f"elapsed:    {took:.2f} s  ->  {args.count / took:,.0f} records/s")
    print(f"relay CPU:  {cpu / args.count * 1e6:.0f} µs per record (the relays' processes)")
    print(f"batches:    {batches:.0f} ({args.count / max(batches, 1):.0f} rows each)")


async def relay_all(
    args: argparse.Namespace,
    endpoints: Any,
    admin: str,
    schema: str,
    conn: asyncpg.Connection,
    *,
    ready: bool = False,
) -> tuple[float, float, float]:
    async with AsyncExitStack() as stack:
        registries = []
        relays = []
        for _ in range(args.relays):
            producer = relay_producer(_Settings(kafka=endpoints.kafka(), database_url=admin))
            await producer.start()
            stack.push_async_callback(producer.stop)
            db = Database(admin, schema=schema)
            await db.open()
            stack.push_async_callback(db.close)
            publisher = outbox_publisher if args.publisher == "batch" else one_send_per_record
            registries.append(CollectorRegistry())
            relays.append(
                outbox.OutboxRelay(
                    lambda db=db: db.pool,  # type: ignore[misc]
                    schema=schema,
                    publish=publisher(producer),
                    metrics=outbox.RelayMetrics(registries[-1]),
                    batch_size=args.batch_size,
                    poll_interval_s=0.05,
                )
            )
        if ready:  # a worker: say so, then wait for the go
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started, cpu_started = time.perf_counter(), time.process_time()
        tasks = [asyncio.create_task(relay.run()) for relay in relays]
        await drained(conn)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    batches = sum(r.get_sample_value("coinstream_outbox_batches_total") or 0 for r in registries)
    return took, cpu, batches


async def relay_in_processes(
    args: argparse.Namespace, schema: str, conn: asyncpg.Connection
) -> tuple[float, float, float]:
    """Start the workers, let them go together once all are ready, wait until drained."""
    options = ["--relays", str(args.relays), "--publisher", args.publisher]
    options += ["--batch-size", str(args.batch_size), "--join", schema]
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.relay",
            *options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(args.processes)
    ]
    for worker in workers:
        assert worker.stdout is not None
        await worker.stdout.readline()  # "ready"
    started = time.perf_counter()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        await worker.stdin.drain()
    await drained(conn)
    took = time.perf_counter() - started
    # Each worker prints the CPU it spent relaying (not starting) and its batches.
    reports = [(await worker.communicate())[0].split() for worker in workers]
    return took, sum(float(r[-2]) for r in reports), sum(float(r[-1]) for r in reports)


async def join(args: argparse.Namespace) -> None:
    """A worker of `relay_in_processes`: relay the schema until drained, print batches."""
    endpoints = stack_endpoints(get_instance("default"))
    admin = endpoints.database()
    conn = await asyncpg.connect(admin, server_settings={"search_path": args.join})
    try:
        _, cpu, batches = await relay_all(args, endpoints, admin, args.join, conn, ready=True)
    finally:
        await conn.close()
    print(cpu, batches, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--keys", type=int, default=2_000)
    parser.add_argument("--relays", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--publisher", choices=("batch", "send"), default="batch")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--join", help=argparse.SUPPRESS)  # a worker of --processes
    args = parser.parse_args()
    uvloop.run(join(args) if args.join else run(args))


if __name__ == "__main__":
    main()
