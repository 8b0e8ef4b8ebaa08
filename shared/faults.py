"""Crash points for recovery tests: die like a killed process at a named step.

Set `COINSTREAM_CRASH_AT=<point>` in a service's environment and the process SIGKILLs
itself when it reaches that point, so tests can prove that a crash between two steps
neither loses nor repeats a money movement. Unset, a crash point costs one dict lookup.
"""

import os
import signal


def crash_point(name: str) -> None:
    """Kill this process, with no cleanup at all, if the environment names this point."""
    if os.environ.get("COINSTREAM_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
