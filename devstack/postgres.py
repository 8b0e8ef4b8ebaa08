"""PostgreSQL for the local stack: a private cluster in `.stack/<name>/postgres`, run with
the server binaries of the distribution's packages (Debian: /usr/lib/postgresql/*/bin).

PostgreSQL refuses to run as root, so when we are root the cluster belongs to an
unprivileged system user and every server command runs as that user.
"""

import asyncio
import os
import pwd
import shutil
import stat
import time
from pathlib import Path

import asyncpg

from devstack.errors import DevstackError
from devstack.instances import ADMIN_ROLE, Instance
from devstack.procs import pid_alive, run, say, succeeds, wait_ready
from shared import db_roles

OS_USER = "coinstream"

_DEBIAN_ROOT = Path("/usr/lib/postgresql")


def _as_root() -> bool:
    return os.geteuid() == 0


def find_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: Debian's newest version, else PATH."""
    versions = [path for path in _DEBIAN_ROOT.glob("*/bin") if (path / "pg_ctl").exists()]
    if versions:
        return max(versions, key=lambda path: _version_key(path.parent.name))
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and (Path(pg_ctl).parent / "initdb").exists():
        return Path(pg_ctl).parent
    raise DevstackError(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found in {_DEBIAN_ROOT}/*/bin "
        "or on PATH: `sh scripts/prereqs stack` installs them (Debian/Ubuntu: `postgresql`), "
        "or set DATABASE_URL to an existing server"
    )


def missing_tools() -> list[str]:
    """What has to be installed before this machine can run PostgreSQL (empty: nothing)."""
    try:
        find_bin_dir()
    except DevstackError as error:
        return [str(error)]
    if _as_root() and shutil.which("runuser") is None:
        return ["runuser not found: as root, PostgreSQL is run as another user with it "
                "(`apt-get install util-linux`)"]  # fmt: skip
    return []


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return ()


def _as_owner(*argv: str | Path) -> list[str]:
    """A command line run as the cluster's owner: ourselves, or OS_USER when we are root."""
    args = [str(arg) for arg in argv]
    return ["runuser", "-u", OS_USER, "--", *args] if _as_root() else args


async def _ensure_os_user() -> None:
    try:
        pwd.getpwnam(OS_USER)
        return
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        raise DevstackError(f"running as root and no `useradd` to create the user {OS_USER!r}")
    await run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
         "/nonexistent", "--shell", "/usr/sbin/nologin", OS_USER],
        what=f"creating the system user {OS_USER!r} to run PostgreSQL",
    )  # fmt: skip
    say(f"postgres: created system user {OS_USER!r} (PostgreSQL does not run as root)")


async def _check_reachable(folder: Path) -> None:
    """OS_USER must be able to walk down to the data folder; a repository cloned inside
    a `mktemp -d` folder (mode 700) is the usual reason it cannot."""
    if await succeeds(_as_owner("test", "-x", folder)):
        return
    closed = [p for p in (folder, *folder.parents) if not p.stat().st_mode & stat.S_IXOTH]
    blocker = closed[-1] if closed else folder
    raise DevstackError(
        f"PostgreSQL runs as the user {OS_USER!r}, who cannot enter {folder}: {blocker} "
        f"is not searchable by others. `chmod o+x {blocker}` (or clone elsewhere), or set "
        "DATABASE_URL to an existing server."
    )


def _owned_by_server(path: Path) -> None:
    if _as_root():
        user = pwd.getpwnam(OS_USER)
        os.chown(path, user.pw_uid, user.pw_gid)


async def _init_cluster(instance: Instance, bin_dir: Path) -> None:
    """initdb, once: trust authentication (the server listens on 127.0.0.1 only)."""
    data = instance.postgres_dir
    if (data / "PG_VERSION").exists():
        return
    shutil.rmtree(data, ignore_errors=True)  # an interrupted initdb leaves a non-empty folder
    data.mkdir(parents=True)
    _owned_by_server(data)
    started = time.monotonic()
    await run(
        _as_owner(bin_dir / "initdb", "-D", data, "--auth=trust", "-U", "postgres",
                  "--encoding=UTF8", "--no-locale"),
        what="initdb",
    )  # fmt: skip
    with (data / "postgresql.conf").open("a") as conf:
        conf.write("\ninclude = 'coinstream.conf'\n")
    say(f"postgres: cluster created in {time.monotonic() - started:.1f}s ({data})")


def _write_config(instance: Instance) -> None:
    """Settings that follow the instance, rewritten at every start."""
    data = instance.postgres_dir
    path = data / "coinstream.conf"
    path.write_text(
        "# Written by devstack/postgres.py at every start: edit that file, not this one.\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {instance.postgres_port}\n"
        f"unix_socket_directories = '{data}'\n"
        # Full durability, as in production: money tests must pay the real commit cost.
        "fsync = on\n"
        "synchronous_commit = on\n"
        "full_page_writes = on\n"
        # Modest sizes for a 2-core developer machine running four services and Kafka.
        "max_connections = 200\n"
        "shared_buffers = 256MB\n"
        "effective_cache_size = 1GB\n"
        "work_mem = 8MB\n"
        "maintenance_work_mem = 64MB\n"
        "max_wal_size = 1GB\n"
        "timezone = 'UTC'\n"
        "log_timezone = 'UTC'\n"
        "password_encryption = 'scram-sha-256'\n"
    )
    _owned_by_server(path)
    hba = data / "pg_hba.conf"
    hba.write_text(
        "# Written by devstack/postgres.py at every start: edit that file, not this one.\n"
        "# The unix socket lives in the data folder (mode 0700): only the server's OS user\n"
        "# and root reach it; devstack provisions roles through it. Everyone else logs in\n"
        "# over TCP with a password (SCRAM).\n"
        "local all all trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host all all ::1/128 scram-sha-256\n"
    )
    _owned_by_server(hba)


async def _socket_connect(instance: Instance, database: str = "postgres") -> asyncpg.Connection:
    """The bootstrap superuser over the server's unix socket (no password there)."""
    return await asyncpg.connect(
        host=str(instance.postgres_dir),
        port=instance.postgres_port,
        user="postgres",
        database=database,
        timeout=2.0,
    )


async def _reload(instance: Instance) -> None:
    conn = await _socket_connect(instance)
    try:
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def _socket_answers(instance: Instance) -> bool:
    try:
        conn = await _socket_connect(instance)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


async def answers(database_url: str) -> bool:
    """True when the server runs `SELECT 1` (an open port is not enough)."""
    try:
        conn = await asyncpg.connect(database_url, timeout=2.0)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return bool(await conn.fetchval("SELECT 1") == 1)
    finally:
        await conn.close()


async def _ensure_database(instance: Instance) -> None:
    """The administrator role (a superuser with a password, for set-up and tests) and the
    database the services use (see Instance.local_endpoints); the services' own roles
    come from `shared.db_roles.provision` once the database exists."""
    conn = await _socket_connect(instance)
    try:
        stored = await conn.fetchrow(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1", ADMIN_ROLE
        )
        password = instance.secrets.postgres_password(ADMIN_ROLE)
        if stored is None or not db_roles.verifies(password, stored["rolpassword"]):
            # A verifier, not the password: the server logs a failed statement's text.
            verifier = db_roles.scram_verifier(password)
            verb = "CREATE" if stored is None else "ALTER"
            await conn.execute(f"{verb} ROLE coinstream LOGIN SUPERUSER PASSWORD '{verifier}'")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'coinstream'"):
            await conn.execute("CREATE DATABASE coinstream OWNER coinstream")
    finally:
        await conn.close()


async def _is_running(instance: Instance, bin_dir: Path) -> bool:
    return await succeeds(_as_owner(bin_dir / "pg_ctl", "status", "-D", instance.postgres_dir))


async def ensure_running(instance: Instance) -> None:
    """Create the cluster if needed, start it unless it runs, wait until it answers."""
    bin_dir = find_bin_dir()
    if _as_root():
        await _ensure_os_user()
        instance.postgres_dir.parent.mkdir(parents=True, exist_ok=True)
        await _check_reachable(instance.postgres_dir.parent)
    await _init_cluster(instance, bin_dir)
    log = instance.log("postgres")
    started = time.monotonic()
    already = await _is_running(instance, bin_dir)
    _write_config(instance)  # a running server rereads it below (authentication rules)
    if not already:
        log.parent.mkdir(parents=True, exist_ok=True)
        await run(
            _as_owner(bin_dir / "pg_ctl", "start", "-D", instance.postgres_dir, "-w", "-t", "60"),
            what=f"starting PostgreSQL (see {log})",
            log=log,
        )
    await wait_ready("postgres", lambda: _socket_answers(instance), log=log, timeout_s=60.0)
    if already:
        await _reload(instance)
    await _ensure_database(instance)
    took = time.monotonic() - started
    where = f"127.0.0.1:{instance.postgres_port}"
    say(f"postgres {'already running' if already else f'ready in {took:.1f}s'} ({where})")


async def wait_external(database_url: str) -> None:
    """Wait for a server this stack does not run (DATABASE_URL)."""
    took = await wait_ready(
        "postgres (DATABASE_URL)", lambda: answers(database_url), log=None, timeout_s=30.0
    )
    say(f"postgres (external) answers in {took:.1f}s")


def server_pid(instance: Instance) -> int | None:
    """The postmaster's pid, from its own pid file, if that process exists."""
    try:
        pid = int((instance.postgres_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None  # a crash leaves a stale file behind


async def stop_server(instance: Instance) -> bool:
    """`pg_ctl stop -m fast` (rolls back open transactions, then a clean shutdown)."""
    if not (instance.postgres_dir / "PG_VERSION").exists():
        return False
    bin_dir = find_bin_dir()
    if not await _is_running(instance, bin_dir):
        return False
    await run(
        _as_owner(bin_dir / "pg_ctl", "stop", "-D", instance.postgres_dir, "-m", "fast", "-w"),
        what="stopping PostgreSQL",
    )
    return True


async def crash_and_restart(instance: Instance, *, down_s: float = 0.0) -> float:
    """Stop the server as a crash would, `pg_ctl stop -m immediate` (every connection
    dropped at once, no checkpoint: crash recovery at the next start), keep it down
    `down_s`, start it again and wait until it answers. Returns the seconds it took.

    For tests of what survives a database restart; the server must be running.
    """
    bin_dir = find_bin_dir()
    log = instance.log("postgres")
    started = time.monotonic()
    data = instance.postgres_dir
    await run(
        _as_owner(bin_dir / "pg_ctl", "stop", "-D", data, "-m", "immediate", "-w"),
        what="stopping PostgreSQL immediately",
    )
    await asyncio.sleep(down_s)
    await run(
        _as_owner(bin_dir / "pg_ctl", "start", "-D", data, "-w", "-t", "60"),
        what=f"starting PostgreSQL again (see {log})",
        log=log,
    )
    await wait_ready("postgres", lambda: _socket_answers(instance), log=log, timeout_s=60.0)
    return time.monotonic() - started
