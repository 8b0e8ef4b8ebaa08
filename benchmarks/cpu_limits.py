"""CPU limits per process, as a container runtime sets a pod's: a cgroup of its own for
each process under the cpu controller, with a CFS quota (cgroup v1's `cpu.cfs_quota_us`,
v2's `cpu.max`). Needs root; used by `benchmarks.scale`."""

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PERIOD_US = 100_000  # the kernel's default CFS period, as Kubernetes uses


@dataclass(frozen=True)
class Controller:
    """Where the cpu controller is mounted, and which cgroup version it speaks."""

    root: Path
    v2: bool

    @classmethod
    def find(cls, mounts: Path = Path("/sys/fs/cgroup")) -> "Controller":
        """The cpu controller of this machine: v1's `cpu` hierarchy, else a v2 hierarchy
        (the unified one, or `unified/` beside v1 hierarchies) that offers `cpu`."""
        if (mounts / "cpu" / "cpu.cfs_quota_us").exists():
            return cls(mounts / "cpu", v2=False)
        for root in (mounts, mounts / "unified"):
            controllers = root / "cgroup.controllers"
            if controllers.exists() and "cpu" in controllers.read_text().split():
                return cls(root, v2=True)
        raise RuntimeError(f"no cgroup cpu controller under {mounts}: CPU limits need one")

    def quota_file(self, group: Path) -> Path:
        return group / ("cpu.max" if self.v2 else "cpu.cfs_quota_us")

    def quota(self, cores: float) -> str:
        """What the quota file takes for `cores` CPUs per period."""
        quota_us = round(cores * PERIOD_US)
        return f"{quota_us} {PERIOD_US}" if self.v2 else str(quota_us)


@dataclass(frozen=True)
class Throttling:
    periods: int  # CFS periods in which the group ran
    throttled: int  # of which it used its whole quota and waited

    def __sub__(self, before: "Throttling") -> "Throttling":
        return Throttling(self.periods - before.periods, self.throttled - before.throttled)

    @property
    def share(self) -> float:
        return self.throttled / self.periods if self.periods else 0.0


class CpuLimits:
    """Processes held to `cores` CPUs each, each in a cgroup `<prefix>-<name>` of its own;
    `release` moves them back to the root cgroup and removes the groups."""

    def __init__(self, cores: float, *, controller: Controller, prefix: str) -> None:
        if cores <= 0:
            raise ValueError("a CPU limit is a positive number of cores")
        self.cores = cores
        self._controller = controller
        self._prefix = prefix
        self._groups: dict[str, Path] = {}

    def limit(self, name: str, pid: int) -> None:
        """Hold process `pid` (all its threads, and children it starts later) to the limit."""
        group = self._groups.get(name)
        if group is None:
            group = self._controller.root / f"{self._prefix}-{name}"
            group.mkdir(exist_ok=True)
            if self._controller.v2:  # v2 hands the controller down explicitly
                _write(self._controller.root / "cgroup.subtree_control", "+cpu")
            _write(self._controller.quota_file(group), self._controller.quota(self.cores))
            self._groups[name] = group
        _write(group / "cgroup.procs", str(pid))

    def throttling(self) -> Throttling:
        """Periods run and periods throttled, summed over the groups."""
        periods = throttled = 0
        for group in self._groups.values():
            stat = dict(_pairs((group / "cpu.stat").read_text()))
            periods += stat.get("nr_periods", 0)
            throttled += stat.get("nr_throttled", 0)
        return Throttling(periods, throttled)

    def release(self) -> None:
        """Every process back in the root cgroup, the groups removed."""
        for group in self._groups.values():
            with contextlib.suppress(FileNotFoundError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, OSError):
                        _write(self._controller.root / "cgroup.procs", pid)
            try:
                os.rmdir(group)
            except FileNotFoundError:
                pass
            except OSError as error:  # a process could not be moved out: say so
                print(f"cpu limits: {group} left behind ({error})", file=sys.stderr)
        self._groups.clear()


def _pairs(text: str) -> Iterator[tuple[str, int]]:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            yield key, int(value)


def _write(path: Path, value: str) -> None:
    with path.open("w") as out:
        out.write(value)
