"""Benchmark: two replicas against one when every replica has a CPU limit of its own.

`benchmarks.compare` runs the replicas with no limit, and on a 2-core machine one replica
of each service already keeps both cores about 90% busy: a second replica there can only
add its own overhead (docs/benchmarks.md). In a deployment each replica is a pod that
brings CPU of its own: the Helm chart requests 250m per pod, and the scheduler places
pods where that much is free. This runs that case on the same machine: each process of
gifting and the wallet (both replicas) in a cgroup of its own with a CFS quota of
`--cpu-limit` cores; Kafka, PostgreSQL, payment, payout and the load generator
unlimited. Then coinstream unpaced with one replica of each and with two, in `--pairs`
pairs whose order alternates (as in `benchmarks.compare`). It prints each run, the
share of the limited processes' CFS periods that were throttled (near 100%: the limit
is what bounds the run), and the median ratio of the pairs.

Needs root and a cgroup cpu controller (v1 or v2) and the running stack (`make up`).
Run: `python -m benchmarks.scale --count 10000 --cpu-limit 0.25`.
"""

import argparse
import os
import statistics

import uvloop

from benchmarks import compare, gifts
from benchmarks.cpu_limits import Controller, CpuLimits
from devstack.instances import get_instance
from devstack.services import running_services

_LIMITED = ("gifting", "wallet")


def _limit_running(limits: CpuLimits) -> list[str]:
    """Put every running process of gifting and the wallet under the limit."""
    limited = []
    for name, pid in running_services(get_instance("default")).items():
        if name.split("-")[0] in _LIMITED:
            limits.limit(name, pid)
            limited.append(name)
    return sorted(limited)


async def _run(
    limits: CpuLimits, run: str, args: argparse.Namespace, *, replicas: int
) -> compare.Row:
    if replicas == 1:
        return await _measured(limits, run, args)
    async with compare.second_replicas(_LIMITED):
        _limit_running(limits)
        return await _measured(limits, run, args)


async def _measured(limits: CpuLimits, run: str, args: argparse.Namespace) -> compare.Row:
    before = limits.throttling()
    row = await compare.coinstream_run(run, args)
    throttled = limits.throttling() - before
    print(f"  {throttled.share:.0%} of the limited processes' CFS periods throttled", flush=True)
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=gifts.positive, default=10_000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--cpu-limit",
        type=float,
        default=0.25,
        help="cores each process of gifting and the wallet may use (default 0.25)",
    )
    parser.add_argument("--pairs", type=gifts.positive, default=4)
    args = parser.parse_args()
    limits = CpuLimits(
        args.cpu_limit, controller=Controller.find(), prefix=f"coinstream-bench-{os.getpid()}"
    )
    try:
        names = _limit_running(limits)
        if names != sorted(_LIMITED):  # none missing, no second replica left running
            raise SystemExit(
                f"scale: one replica each of {' and '.join(_LIMITED)} must run (`make up`); "
                f"found {names or 'none'}"
            )
        print(
            f"each of {', '.join(names)} (and their second replicas) held to "
            f"{args.cpu_limit:g} cores",
            flush=True,
        )
        await gifts.measure(max(args.count // 5, 1_000), timeout_s=args.timeout)  # warm-up
        await compare.settle()
        rows, ratios = [], []
        for pair in range(1, args.pairs + 1):
            order = (2, 1) if pair % 2 == 0 else (1, 2)
            runs = {}
            for replicas in order:
                role = "one replica" if replicas == 1 else "two replicas"
                runs[replicas] = await _run(limits, f"{role}, pair {pair}", args, replicas=replicas)
                rows.append(runs[replicas])
            ratios.append(runs[2].throughput / runs[1].throughput)
    finally:
        limits.release()
    print()
    print(compare.table(rows))
    print()
    median = statistics.median(ratios)
    print(
        f"two replicas, each process held to {args.cpu_limit:g} cores: {median:.0%} of one "
        f"replica's throughput, the median of {compare.percents(ratios)} (target >= 100%): "
        f"{compare.verdict(median >= 1.0)}"
    )


if __name__ == "__main__":
    uvloop.run(main())
