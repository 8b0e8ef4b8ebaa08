"""Benchmark: two replicas against one when every replica has a CPU limit of its own.

`benchmarks.compare` runs the replicas with no limit, and on a 2-core machine one replica
of each service already keeps both cores about 90% busy: a second replica there can only
add its own overhead (docs/benchmarks.md). In a deployment each replica is a pod that
brings CPU of its own: the Helm chart requests 250m per pod, and the scheduler places
pods where that much is free. This runs that case on the same machine: each process of
gifting and the wallet (both replicas) in a cgroup of its own with a CFS quota of
`--cpu-limit` cores; Kafka, PostgreSQL, payment, payout and the load generator
unlimited. Then `benchmarks.compare`'s replica pairs: coinstream unpaced with one
replica of each and with two, and the ceiling with one and two worker processes per hop,
each worker held to the same quota, in `--replica-pairs` pairs whose order alternates.
It prints each run, the share of the limited processes' CFS periods that were throttled
over the pairs (near 100%: the limit is what bounds the runs), and the median ratios.

Needs root and a cgroup cpu controller (v1 or v2) and the running stack (`make up`).
Run: `make bench-scale` or `python -m benchmarks.scale --count 10000 --cpu-limit 0.25`.
"""

import os

import uvloop

from benchmarks import compare
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


async def main() -> None:
    parser = compare.arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-limit",
        type=float,
        default=0.25,
        help="cores each process of gifting and the wallet (and each ceiling worker) may "
        "use (default 0.25)",
    )
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
            f"each of {', '.join(names)}, their second replicas and the ceiling's workers "
            f"held to {args.cpu_limit:g} cores",
            flush=True,
        )
        await compare.warm_up(args)
        before = limits.throttling()
        pairs = await compare.replica_pairs(args, started=limits.limit)
        throttled = limits.throttling() - before
    finally:
        limits.release()
    print()
    print(compare.table(pairs.rows))
    print()
    print(f"{throttled.share:.0%} of the limited processes' CFS periods throttled")
    print(pairs.verdict(f"two replicas, each process held to {args.cpu_limit:g} cores"))


if __name__ == "__main__":
    uvloop.run(main())
