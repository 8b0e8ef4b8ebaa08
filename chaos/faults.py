"""One fault per round, chosen by the run's seeded random generator, with bounded
random delays. The first rounds take every kind once (in a seeded order), so that even
a short run covers them all."""

import asyncio
import random
import time
from dataclasses import dataclass

from chaos.stack import ChaosStack, restart_postgres
from devstack.procs import live_pid
from devstack.services import process_name

KINDS = ("service-kill", "broker-kill", "postgres-restart", "replica-change")
MAX_REPLICAS = 3


@dataclass(frozen=True)
class Bounds:
    """Seconds: the pause before each fault, and how long a killed part stays down."""

    gap: tuple[float, float] = (2.0, 6.0)
    service_down: tuple[float, float] = (0.5, 5.0)
    broker_down: tuple[float, float] = (0.0, 5.0)
    postgres_down: tuple[float, float] = (0.0, 3.0)


@dataclass(frozen=True)
class Fault:
    round: int
    kind: str
    target: str
    started: float  # wall clock
    restored: float  # when the part was back (restart returned)


def plan(rng: random.Random, rounds: int) -> list[str]:
    first = list(KINDS)
    rng.shuffle(first)
    return [first[n] if n < len(first) else rng.choice(KINDS) for n in range(rounds)]


async def inject(stack: ChaosStack, rng: random.Random, bounds: Bounds, n: int, kind: str) -> Fault:
    started = time.time()
    match kind:
        case "service-kill":
            service, replica = rng.choice(stack.running())
            target = process_name(service, replica)
            await stack.stop(service, replica, kill=True)
            await asyncio.sleep(rng.uniform(*bounds.service_down))
            await stack.start(service, replica)
        case "broker-kill":
            target = rng.choice(stack.brokers.names())
            await stack.brokers.kill(target)
            await asyncio.sleep(rng.uniform(*bounds.broker_down))
            await stack.brokers.restart(target)
        case "postgres-restart":
            target = "postgres"
            await restart_postgres(stack.instance, rng.uniform(*bounds.postgres_down))
        case "replica-change":
            service = rng.choice(sorted(stack.replicas))
            count = len(stack.replicas[service])
            add = count == 1 or (count < MAX_REPLICAS and rng.random() < 0.5)
            if add:
                replica = await stack.start(service)
                target = f"+{process_name(service, replica)}"
            else:
                replica = max(stack.replicas[service])
                await stack.stop(service, replica)  # a scale-down: SIGTERM
                target = f"-{process_name(service, replica)}"
        case _:
            raise ValueError(f"unknown fault kind {kind!r}")
    return Fault(n, kind, target, started, time.time())


async def revive_the_dead(stack: ChaosStack) -> list[str]:
    """Restart any replica that died without being killed (a finding of its own)."""
    dead = [
        (service, replica)
        for service, replica in stack.running()
        if live_pid(stack.instance.run / f"{process_name(service, replica)}.pid") is None
    ]
    for service, replica in dead:
        await stack.start(service, replica)
    return [process_name(s, r) for s, r in dead]
