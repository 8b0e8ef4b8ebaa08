"""Process plumbing of the local stack: commands, detached daemons, pid files, readiness.

A daemon's pid file holds its pid and its start time (from /proc): a pid alone can be
reused by an unrelated process after a reboot, and `down` must never signal a stranger.
"""

import asyncio
import contextlib
import fcntl
import os
import shlex
import signal
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from devstack.errors import DevstackError

# Popen objects of the daemons this Python process started. Keeping them lets us reap an
# exited child (a zombie still answers kill(pid, 0)) and stops Popen.__del__ from
# warning that a deliberately detached process is "still running".
_children: dict[int, "subprocess.Popen[bytes]"] = {}

_PROC = Path("/proc")


def say(message: str) -> None:
    """One progress line for the developer watching `make up` or a test session."""
    print(message, flush=True)


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, to put into an error message."""
    try:
        with path.open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip()
    except FileNotFoundError:
        return "(no log written)"


async def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path = Path("/"),
    log: Path | None = None,
) -> str:
    """Run a command to completion and return its output; fail with that output.

    With `log`, the output is appended to that file instead (for commands that leave a
    daemon behind holding their stdout, like `pg_ctl start`: a pipe would never close).
    The working folder defaults to `/`: a command run as another user (PostgreSQL's)
    must not start in a folder that user cannot read.
    """
    if log is None:
        proc = await _exec(argv, stdout=subprocess.PIPE, env=env, cwd=cwd)
        output = (await _finish(proc)).decode(errors="replace")
    else:
        with log.open("ab") as out:
            proc = await _exec(argv, stdout=out, env=env, cwd=cwd, start_new_session=True)
            await _finish(proc)
        output = tail(log)
    if proc.returncode != 0:
        raise DevstackError(f"{what} failed (exit {proc.returncode}):\n{output.strip()}")
    return output


async def succeeds(argv: Sequence[str]) -> bool:
    """Whether a command exits 0 (for checks like `pg_ctl status`); its output is dropped."""
    proc = await _exec(argv, stdout=subprocess.DEVNULL, cwd=Path("/"))
    await _finish(proc)
    return proc.returncode == 0


async def _exec(argv: Sequence[str], **options: Any) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT, **options
        )
    except FileNotFoundError:
        raise DevstackError(
            f"{argv[0]} not found on PATH (needed to run: {shlex.join(argv)})"
        ) from None


async def _finish(proc: asyncio.subprocess.Process) -> bytes:
    try:
        return (await proc.communicate())[0] or b""
    except asyncio.CancelledError:
        # A sibling step failed or the developer pressed Ctrl-C: leave no orphan behind.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise


def spawn(
    argv: Sequence[str], *, env: Mapping[str, str], log: Path, pid_file: Path, cwd: Path
) -> int:
    """Start a daemon in its own session (it outlives this process) and record its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    ticks = _start_ticks(proc.pid)
    pid_file.write_text(f"{proc.pid}\n" if ticks is None else f"{proc.pid} {ticks}\n")
    return proc.pid


def _start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot); None without /proc, or when it
    has exited (a zombie waiting for its parent to reap it is not running any more)."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def _is_alive(pid: int, start_ticks: int | None) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    if _PROC.is_dir():
        ticks = _start_ticks(pid)
        return ticks is not None and (start_ticks is None or ticks == start_ticks)
    try:  # no /proc (macOS): existence is all we can check
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (exited and zombie processes do not)."""
    return _is_alive(pid, None)


def live_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` if that very process still runs; a stale file is removed."""
    try:
        pid, *ticks = (int(field) for field in pid_file.read_text().split())
    except (FileNotFoundError, ValueError):
        return None
    if _is_alive(pid, ticks[0] if ticks else None):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


async def stop(pid_file: Path, *, grace_s: float, kill: bool = False) -> bool:
    """Stop the process of `pid_file` and its process group: SIGTERM, then SIGKILL after
    `grace_s` (or SIGKILL at once with `kill`, to simulate a crash). False if none ran."""
    pid = live_pid(pid_file)
    if pid is None:
        return False
    _signal_group(pid, signal.SIGKILL if kill else signal.SIGTERM)
    if not await _exited(pid_file, grace_s):
        _signal_group(pid, signal.SIGKILL)
        if not await _exited(pid_file, 10.0):
            raise DevstackError(f"process {pid} ({pid_file.stem}) survived SIGKILL")
    _children.pop(pid, None)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Daemons lead their own session, so their group id is their pid; signalling the
    # group also stops anything they spawned.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


async def _exited(pid_file: Path, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while live_pid(pid_file) is not None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def wait_ready(
    what: str,
    probe: Callable[[], Awaitable[bool]],
    *,
    log: Path | None,
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Poll `probe` until it answers True; returns the seconds it took.

    Fails early when `alive` says the process died, and on timeout; both errors point
    at the log and show its last lines.
    """
    started = time.monotonic()
    while not await probe():
        if not alive():
            raise DevstackError(f"{what} exited while starting{_see(log)}")
        if time.monotonic() - started > timeout_s:
            raise DevstackError(f"{what} not ready after {timeout_s:.0f}s{_see(log)}")
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def _see(log: Path | None) -> str:
    return "" if log is None else f"; see {log}, which ends with:\n{tail(log)}"


@contextlib.asynccontextmanager
async def locked(lock_file: Path) -> AsyncIterator[None]:
    """Hold an exclusive lock on `lock_file`, so that two `up` runs (or a CLI and a test
    session) provisioning the same thing wait for each other instead of racing."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock
