"""benchmarks.cpu_limits: which cgroup files it finds and writes, and a real process held
to a quota by the machine's own cpu controller (where there is one and we are root)."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.cpu_limits import Controller, CpuLimits, Throttling


def test_cgroup_v1_is_found_by_its_quota_file(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")

    controller = Controller.find(tmp_path)

    assert controller == Controller(tmp_path / "cpu", v2=False)
    assert controller.quota(0.25) == "25000"
    assert controller.quota_file(tmp_path / "g") == tmp_path / "g" / "cpu.cfs_quota_us"


@pytest.mark.parametrize("where", [".", "unified"])
def test_cgroup_v2_is_found_where_it_offers_cpu(tmp_path: Path, where: str) -> None:
    root = tmp_path / where
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")

    controller = Controller.find(tmp_path)

    assert controller == Controller(root, v2=True)
    assert controller.quota(1.5) == "150000 100000"
    assert controller.quota_file(root / "g") == root / "g" / "cpu.max"


def test_a_machine_without_a_cpu_controller_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")

    with pytest.raises(RuntimeError, match="no cgroup cpu controller"):
        Controller.find(tmp_path)


def test_a_limit_is_a_positive_number_of_cores(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        CpuLimits(0, controller=Controller(tmp_path, v2=False), prefix="x")


def test_throttling_is_counted_between_two_readings() -> None:
    run = Throttling(periods=120, throttled=90) - Throttling(periods=20, throttled=10)

    assert run == Throttling(100, 80)
    assert run.share == 0.8
    assert Throttling(0, 0).share == 0.0


def _machine_controller() -> Controller | None:
    """The machine's cpu controller, if this process may make a group under it with a
    quota (root, a cpu controller, and on cgroup v2 one that can be handed down)."""
    if os.geteuid() != 0:
        return None
    try:
        controller = Controller.find()
        probe = CpuLimits(1.0, controller=controller, prefix=f"coinstream-probe-{os.getpid()}")
        probe.limit("self", os.getpid())
        probe.release()
    except (RuntimeError, OSError):
        return None
    return controller


@pytest.mark.skipif(_machine_controller() is None, reason="needs root and a cgroup cpu controller")
def test_a_process_is_held_to_its_quota_and_let_go_after() -> None:
    controller = _machine_controller()
    assert controller is not None
    busy = subprocess.Popen(["python3", "-c", "while True: pass"])
    limits = CpuLimits(0.2, controller=controller, prefix=f"coinstream-test-{os.getpid()}")
    group = controller.root / f"coinstream-test-{os.getpid()}-busy"
    try:
        limits.limit("busy", busy.pid)
        assert (group / "cgroup.procs").read_text().split() == [str(busy.pid)]
        assert controller.quota_file(group).read_text().split()[0] == "20000"
        before, cpu_before = limits.throttling(), _cpu_s(busy.pid)
        time.sleep(1.0)
        used, spun = _cpu_s(busy.pid) - cpu_before, limits.throttling() - before
        # It wants a whole core and gets a fifth of one at most (less on a busy machine).
        assert used < 0.3, used
        assert spun.periods > 0
    finally:
        limits.release()
        busy.kill()
        busy.wait()
    assert not group.exists()


def _cpu_s(pid: int) -> float:
    """CPU seconds process `pid` used so far (user and system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
