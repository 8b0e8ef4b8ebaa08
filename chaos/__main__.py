"""`python -m chaos --rounds N --seed S [--instance NAME]` (`make chaos`)."""

import argparse
import asyncio
import logging
import signal
import sys

from chaos.run import Settings, chaos_run, report
from chaos.stack import CHAOS
from devstack.errors import DevstackError
from devstack.instances import INSTANCES, Instance
from devstack.stack import down, ensure_infra


def _instance(name: str) -> Instance:
    if name == CHAOS.name:
        return CHAOS
    if name == "default":
        raise SystemExit("the default instance is the developer's (and the benchmarks'): not here")
    if name not in INSTANCES:
        raise SystemExit(f"unknown instance {name!r}; use chaos or test")
    return INSTANCES[name]


async def main(args: argparse.Namespace) -> int:
    instance = _instance(args.instance)
    enough = asyncio.Event()  # Ctrl-C: no further round, then drain and judge
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, enough.set)
    infra = await ensure_infra(instance)
    try:
        result = await chaos_run(
            instance,
            infra,
            Settings(
                rounds=args.rounds, seed=args.seed, rate=args.rate, max_minutes=args.max_minutes
            ),
            first_replica=0 if instance is CHAOS else 5,
            enough=enough,
        )
    finally:
        if instance is CHAOS and not args.keep_infra:
            await down(instance)
    print(report(result))
    return 1 if result.verdict.violations() else 0


def cli() -> None:
    # The clients reconnect by themselves while the broker is down; one line per failed
    # attempt would bury the report.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="faults to inject, one a round")
    parser.add_argument("--seed", type=int, default=1, help="seeds the faults and the load")
    parser.add_argument("--rate", type=float, default=8.0, help="requests a second")
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="no new round after this long"
    )
    parser.add_argument(
        "--instance", default=CHAOS.name, help="chaos (its own ports, default) or test"
    )
    parser.add_argument(
        "--keep-infra",
        action="store_true",
        help="leave the chaos instance's Kafka and PostgreSQL running",
    )
    try:
        sys.exit(asyncio.run(main(parser.parse_args())))
    except DevstackError as error:
        sys.exit(f"chaos: {error}")


if __name__ == "__main__":
    cli()
