"""What the machine itself must provide before `make demo` and `make test`, and where
it may, installing it: Python's venv module, Java 17+, Maven (until Kafka's jars are
cached), PostgreSQL's server binaries, and make.

`make` and `.ci/run` run this through `scripts/prereqs`, which checks for python3 in
plain sh first. The virtualenv may not exist yet, so this file runs as a script with
the system's python3 (`python3 -I devstack/prereqs.py SCOPE`): standard library only,
and no syntax newer than Python 3.8, so an old python3 can still say it is too old.

Where something is missing and apt-get exists, it is installed as root, or with
`sudo -n` when sudo needs no password; otherwise (or with COINSTREAM_NO_INSTALL=1) the
one command to run is printed and the exit status is 1.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What each make target needs: `venv` to create .venv (make install), `stack` for
# `make up`/`make demo`, `test` for `make test` (its devstack tests always start a local
# Kafka and PostgreSQL, whatever backend the other tests use).
SCOPES = ("venv", "stack", "test")
JAVA_MIN = 17  # Kafka 4's broker
# Debian and Ubuntu releases ship different JDKs: the first one apt knows is chosen.
JAVA_PACKAGES = (
    "openjdk-17-jre-headless",
    "openjdk-21-jre-headless",
    "openjdk-25-jre-headless",
    "default-jre-headless",
)
APT_INSTALL = ("apt-get", "install", "-y", "--no-install-recommends")


@dataclass(frozen=True)
class Need:
    """Something missing, and the Debian/Ubuntu packages that provide it (the first
    apt knows is installed). No packages: apt cannot fix it and `hint` says what can."""

    what: str
    packages: tuple[str, ...] = ()
    hint: str = ""


@dataclass(frozen=True)
class Facts:
    """What this machine has, as far as coinstream's commands care."""

    python: tuple[int, int]
    python_wanted: tuple[tuple[int, int], tuple[int, int]]  # [lowest, first too new)
    venv_module: bool  # venv and ensurepip importable (Debian splits them off: pythonX.Y-venv)
    venv_exists: bool
    java: int | None  # the major version of `java` on PATH; None: no java
    mvn: bool
    kafka_jars_cached: bool
    postgres_server: bool  # initdb and pg_ctl
    make: bool
    env: Mapping[str, str]


@dataclass(frozen=True)
class Privilege:
    root: bool
    sudo: bool  # `sudo -n true` succeeds: sudo without a password
    has_sudo: bool  # sudo is installed at all (a minimal Debian has none: su then)
    apt: bool  # apt-get exists: Debian, Ubuntu and their derivatives
    may_install: bool  # not COINSTREAM_NO_INSTALL


@dataclass(frozen=True)
class Plan:
    """`install` with `prefix` (empty as root, sudo -n otherwise), or `advise`: print
    the command to run (with `prefix`: sudo, `su -c`, or nothing as root) and fail. No
    needs: nothing to do."""

    action: str  # "nothing", "install" or "advise"
    needs: tuple[Need, ...] = ()
    prefix: tuple[str, ...] = ()


# ─── what is missing (pure) ───────────────────────────────────────────────────────────


def missing(facts: Facts, scope: str) -> list[Need]:
    """What `scope` (one of SCOPES) needs that `facts` lack."""
    needs = _python_needs(facts)
    if not facts.make:
        needs.append(Need("make", ("make",)))
    if scope == "venv":
        return needs
    kafka_here = scope == "test" or not facts.env.get("KAFKA_BOOTSTRAP_SERVERS")
    postgres_here = scope == "test" or not facts.env.get("DATABASE_URL")
    if kafka_here:
        needs.extend(_kafka_needs(facts))
    if postgres_here and not facts.postgres_server:
        needs.append(Need("PostgreSQL's server (initdb, pg_ctl)", ("postgresql",)))
    return needs


def _python_needs(facts: Facts) -> list[Need]:
    low, high = facts.python_wanted
    version, wanted, too_new = (_dotted(v) for v in (facts.python, low, high))
    if not low <= facts.python < high:
        return [
            Need(
                f"Python >={wanted},<{too_new} (found {version})",
                hint=f"install python{wanted} and python{wanted}-venv, then run make with "
                f"PYTHON=python{wanted} (e.g. `make PYTHON=python{wanted} demo`)",
            )
        ]
    if facts.venv_exists or facts.venv_module:
        return []
    return [Need(f"Python's venv module (python{version})", (f"python{version}-venv",))]


def _dotted(version: tuple[int, int]) -> str:
    return ".".join(str(part) for part in version)


def _kafka_needs(facts: Facts) -> list[Need]:
    needs = []
    if facts.java is None or facts.java < JAVA_MIN:
        found = "" if facts.java is None else f" (java on PATH is {facts.java})"
        needs.append(Need(f"Java {JAVA_MIN}+{found}", JAVA_PACKAGES))
    if not facts.mvn and not facts.kafka_jars_cached:
        needs.append(Need("Maven (mvn), to fetch Kafka's jars once", ("maven",)))
    return needs


# ─── what to do about it (pure) ───────────────────────────────────────────────────────


def decide(needs: Sequence[Need], privilege: Privilege) -> Plan:
    """Install when apt can fix everything and we may (root, or sudo without a
    password); otherwise advise."""
    if not needs:
        return Plan("nothing")
    fixable = privilege.apt and all(need.packages for need in needs)
    if fixable and privilege.may_install and privilege.root:
        return Plan("install", tuple(needs))
    if fixable and privilege.may_install and privilege.sudo:
        return Plan("install", tuple(needs), ("sudo", "-n"))
    if privilege.root:
        return Plan("advise", tuple(needs))
    return Plan("advise", tuple(needs), ("sudo",) if privilege.has_sudo else ("su", "-c"))


def packages(needs: Sequence[Need], known: Sequence[str]) -> list[str]:
    """One package per need: the first of its candidates apt knows, else the first."""
    chosen: list[str] = []
    for need in needs:
        names = [name for name in need.packages if name in known] or list(need.packages[:1])
        chosen.extend(name for name in names[:1] if name not in chosen)
    return chosen


def advice(plan: Plan, known: Sequence[str], *, apt: bool) -> list[str]:
    """What to tell someone who has to install things themselves: what is missing,
    then the one command (with apt-get update first when apt does not know a package)."""
    lines = ["missing: " + "; ".join(need.what for need in plan.needs)]
    lines.extend(need.hint for need in plan.needs if need.hint)
    if not apt:
        return [*lines, "install them with the system's package manager"]
    if not all(need.packages for need in plan.needs):
        return lines
    names = packages(plan.needs, known)
    commands = [" ".join((*APT_INSTALL, *names))]
    if set(names) - set(known):
        commands.insert(0, "apt-get update")
    if plan.prefix == ("su", "-c"):
        return [*lines, f"run: su -c '{' && '.join(commands)}'"]
    return [*lines, "run: " + " && ".join(" ".join((*plan.prefix, c)) for c in commands)]


# ─── this machine (impure) ────────────────────────────────────────────────────────────


def gather(env: Mapping[str, str]) -> Facts:
    """The facts of this machine and this checkout."""
    return Facts(
        python=(sys.version_info[0], sys.version_info[1]),
        python_wanted=python_range(),
        venv_module=all(importlib.util.find_spec(m) is not None for m in ("venv", "ensurepip")),
        venv_exists=(ROOT / ".venv" / "bin" / "pip").exists(),
        java=java_major(shutil.which("java")),
        mvn=shutil.which("mvn") is not None,
        kafka_jars_cached=(kafka_cache(env) / "complete").exists(),
        postgres_server=postgres_server(),
        make=shutil.which("make") is not None,
        env=env,
    )


def java_major(java: str | None) -> int | None:
    """The major version of a `java` binary, read from its home's `release` file (no JVM
    start: ~0.5 s saved on every make), else from `java -version`."""
    if java is None:
        return None
    release = Path(java).resolve().parents[1] / "release"
    text = release.read_text(errors="replace") if release.is_file() else _java_version(java)
    found = re.search(r'(?:JAVA_VERSION=|version )"(\d+)(?:\.(\d+))?', text)
    if found is None:
        return 0  # a java whose version nobody can read: treated as too old
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def _java_version(java: str) -> str:
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stderr + done.stdout


def kafka_cache(env: Mapping[str, str]) -> Path:
    """Where devstack caches Kafka's jars (devstack.kafka.cache_dir, which this file
    cannot import: the virtualenv may not exist yet)."""
    pom = (ROOT / "devstack" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    version = found.group(1) if found else "unknown"
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "coinstream" / f"kafka-{version}"


def postgres_server() -> bool:
    """initdb and pg_ctl where devstack.postgres looks: Debian's folders, else PATH."""
    for folder in glob.glob("/usr/lib/postgresql/*/bin"):
        if os.path.exists(f"{folder}/initdb") and os.path.exists(f"{folder}/pg_ctl"):
            return True
    pg_ctl = shutil.which("pg_ctl")
    return pg_ctl is not None and (Path(pg_ctl).parent / "initdb").exists()


def python_range() -> tuple[tuple[int, int], tuple[int, int]]:
    """requires-python of pyproject.toml, as [lowest, first too new)."""
    text = (ROOT / "pyproject.toml").read_text()
    low = re.search(r'requires-python\s*=\s*"[^"]*>=\s*(\d+)\.(\d+)', text)
    high = re.search(r'requires-python\s*=\s*"[^"]*<\s*(\d+)\.(\d+)', text)
    lowest = (int(low.group(1)), int(low.group(2))) if low else (3, 11)
    return lowest, (int(high.group(1)), int(high.group(2))) if high else (4, 0)


def privilege(env: Mapping[str, str]) -> Privilege:
    root = os.geteuid() == 0
    sudo = not root and shutil.which("sudo") is not None and _quietly(["sudo", "-n", "true"])
    return Privilege(
        root=root,
        sudo=sudo,
        has_sudo=shutil.which("sudo") is not None,
        apt=shutil.which("apt-get") is not None,
        may_install=env.get("COINSTREAM_NO_INSTALL", "") in ("", "0"),
    )


def apt_known(names: Sequence[str]) -> list[str]:
    """Those of `names` apt has a candidate version of (from its current lists)."""
    if shutil.which("apt-cache") is None or not names:
        return []
    try:
        done = subprocess.run(
            ["apt-cache", "policy", *names], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    # "name:\n  Installed: …\n  Candidate: 17.0…" per package; "(none)" when unknown.
    blocks = re.findall(r"^(\S+):\n(?:\s+.*\n)*?\s+Candidate: (\S+)", done.stdout, re.M)
    return [name for name, candidate in blocks if candidate != "(none)"]


def _quietly(argv: Sequence[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _say(line: str) -> None:
    print(f"prereqs: {line}", file=sys.stderr, flush=True)


def install(plan: Plan) -> None:
    """apt-get update, then install one package per need, non-interactively."""
    names_known = [name for need in plan.needs for name in need.packages]
    how = "as root" if not plan.prefix else "with " + " ".join(plan.prefix)
    _say(f"missing: {'; '.join(need.what for need in plan.needs)}")
    apt = [*plan.prefix, "env", "DEBIAN_FRONTEND=noninteractive"]
    # A failing update (one unreachable third-party repository) need not stop the
    # install: the lists at hand may well know the packages, and the install says if not.
    if subprocess.run([*apt, "apt-get", "update", "-qq"]).returncode != 0:
        _say("apt-get update failed; installing from the package lists at hand")
    names = packages(plan.needs, apt_known(names_known))
    _say(f"installing {' '.join(names)} with apt-get ({how})")
    _run([*apt, *APT_INSTALL, "-qq", *names])


def _run(argv: Sequence[str]) -> None:
    done = subprocess.run(argv)
    if done.returncode != 0:
        raise SystemExit(f"prereqs: `{shlex.join(argv)}` failed (exit {done.returncode})")


def main(argv: Sequence[str]) -> int:
    scope = argv[0] if argv else "test"
    if scope not in SCOPES:
        _say(f"usage: scripts/prereqs [{'|'.join(SCOPES)}]")
        return 2
    env = os.environ
    needs = missing(gather(env), scope)
    if not needs:
        return 0  # the usual case, before sudo is ever asked anything
    allowed = privilege(env)
    plan = decide(needs, allowed)
    if plan.action == "advise":
        known = apt_known([name for need in plan.needs for name in need.packages])
        for line in advice(plan, known, apt=allowed.apt):
            _say(line)
        return 1
    if plan.action == "install":
        install(plan)
        still = missing(gather(env), scope)
        if still:
            _say("still missing after apt-get: " + "; ".join(need.what for need in still))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
