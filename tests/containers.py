"""Where the Docker engine for testcontainers is, and where its containers are reached.

Two pure decisions, kept apart from any engine so unit tests cover them here, where no
Docker runs (tests/unit/test_container_engine.py):

- `engine_candidates`: the endpoints to try, in the order the Docker tooling uses them.
  An explicit choice is the only candidate (testcontainers' `tc.host`, `DOCKER_HOST`,
  then the current Docker context from `DOCKER_CONTEXT` or `currentContext` in
  config.json, as the Docker CLI and testcontainers read them); without one, the
  well-known sockets of Docker Engine, Docker Desktop, Colima, Rancher Desktop, rootless
  Docker and Podman that exist. `find_engine` pings them in that order.
- `container_host`: the address the tests reach published ports at, which Kafka must
  also advertise: TESTCONTAINERS_HOST_OVERRIDE (or TC_HOST) wins; a tcp/ssh engine is
  that remote host; a local socket is 127.0.0.1, or, when the tests themselves run in a
  container, the default gateway (the container host) as testcontainers does it.

Every decision carries its reason, printed in the pytest header, so a fallback to the
devstack backend is never silent.
"""

import gc
import hashlib
import json
import os
import socket
import struct
import urllib.parse
import warnings
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

# Local sockets to look for when nothing names an engine, relative to the home folder
# ("~/") or the file system root ("/"), with what usually answers there.
_HOME_SOCKETS = (
    (".docker/run/docker.sock", "Docker Desktop"),
    (".docker/desktop/docker.sock", "Docker Desktop"),
    (".colima/default/docker.sock", "Colima"),
    (".colima/docker.sock", "Colima"),
    (".rd/docker.sock", "Rancher Desktop"),
)
# Engines behind these run in a VM, where the socket a container may mount (for
# testcontainers' Ryuk reaper) is the VM's /var/run/docker.sock, not this path.
_VM_ENGINES = frozenset({"Docker Desktop", "Colima", "Rancher Desktop"})

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Engine:
    """A Docker API endpoint (a `base_url` for the Docker SDK) and why it was chosen."""

    url: str
    reason: str
    # For TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE: the socket path inside the engine's VM.
    ryuk_socket: str | None = None


@dataclass(frozen=True)
class Discovery:
    """The engine that answered, if any, and a line saying what was tried."""

    engine: Engine | None
    reason: str


def engine_candidates(
    env: Mapping[str, str], home: Path, root: Path = Path("/")
) -> tuple[list[Engine], str]:
    """The endpoints to ping, best first, or none and why not.

    `home` and `root` stand for ~ and / so tests can lay out fake home folders.
    """
    tc_host = _testcontainers_property(home / ".testcontainers.properties", "tc.host")
    if tc_host:
        return [Engine(tc_host, f"tc.host={tc_host} in ~/.testcontainers.properties")], ""
    docker_host = env.get("DOCKER_HOST", "").strip()
    if docker_host:
        return [Engine(docker_host, f"DOCKER_HOST={docker_host}")], ""
    config_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    context, source = _current_context(env, config_dir)
    if context and context != "default":
        host = _context_host(config_dir, context)
        if host is None:
            return [], f"context '{context}' ({source}) names no Docker endpoint"
        return [Engine(host, f"context '{context}' ({source})", _ryuk_socket(host, home))], ""
    found: list[Engine] = []
    runtime_dir = env.get("XDG_RUNTIME_DIR", "")
    for path, engine in [
        (root / "var/run/docker.sock", "Docker Engine"),
        *((home / relative, engine) for relative, engine in _HOME_SOCKETS),
        *(
            [
                (Path(runtime_dir) / "docker.sock", "rootless Docker"),
                (Path(runtime_dir) / "podman/podman.sock", "Podman"),
            ]
            if runtime_dir
            else []
        ),
        (root / "run/podman/podman.sock", "Podman"),
    ]:
        if path.exists():
            found.append(
                Engine(
                    f"unix://{path}",
                    f"{engine} socket found at {path}",
                    "/var/run/docker.sock" if engine in _VM_ENGINES else None,
                )
            )
    if not found:
        return [], "no DOCKER_HOST, no Docker context and no Docker or Podman socket found"
    return found, ""


def find_engine(
    env: Mapping[str, str],
    home: Path,
    ping: Callable[[str], str | None],
    root: Path = Path("/"),
) -> Discovery:
    """The first candidate that answers `ping` (which returns None, or why it did not)."""
    candidates, reason = engine_candidates(env, home, root)
    failures: list[str] = []
    for engine in candidates:
        failure = ping(engine.url)
        if failure is None:
            return Discovery(engine, engine.reason)
        failures.append(f"{engine.reason}, but it did not answer ({failure})")
    return Discovery(None, "; ".join(failures) or reason)


def container_host(
    engine_url: str,
    env: Mapping[str, str],
    in_container: str | None,
    gateway: str | None,
) -> tuple[str, str]:
    """The address the tests reach the engine's published ports at, and why.

    `in_container` is the hint that these tests run in a container (None when they do
    not, see `container_hint`); `gateway` is this machine's default gateway.
    """
    for name in ("TESTCONTAINERS_HOST_OVERRIDE", "TC_HOST"):
        if env.get(name):
            return env[name], f"{name}={env[name]}"
    url = urllib.parse.urlparse(engine_url)
    if url.scheme in {"tcp", "http", "https", "ssh"} and url.hostname:
        return url.hostname, f"the engine's host in {url.scheme}://{url.netloc}"
    if in_container:
        if gateway:
            return gateway, f"local socket, tests inside a container ({in_container}): gateway"
        return "host.docker.internal", f"local socket, tests inside a container ({in_container})"
    return LOCALHOST, "local socket"


@dataclass(frozen=True)
class Backend:
    """Which backend the `infra` fixture uses (external, testcontainers or devstack), why,
    and for testcontainers the engine and the address its containers are reached at."""

    name: str
    reason: str
    engine: Engine | None = None
    host: str = LOCALHOST

    def line(self) -> str:
        return f"coinstream test backend: {self.name} ({self.reason})"


def choose_backend(
    env: Mapping[str, str],
    home: Path,
    ping: Callable[[str], str | None],
    root: Path = Path("/"),
) -> Backend:
    """External stack when both variables are set, else testcontainers on an engine that
    answers, else devstack's `test` instance; each with its reason."""
    kafka = env.get("COINSTREAM_TEST_KAFKA")
    if kafka and env.get("COINSTREAM_TEST_DATABASE_URL"):
        # The database URL may hold a password: name the variable, never print its value.
        return Backend(
            "external", f"COINSTREAM_TEST_KAFKA={kafka}, COINSTREAM_TEST_DATABASE_URL set"
        )
    found = find_engine(env, home, ping, root)
    if found.engine is None:
        return Backend("devstack", f"{found.reason}; using devstack's `test` instance")
    hint = container_hint(root)
    try:
        gateway = default_gateway((root / "proc/net/route").read_text()) if hint else None
    except OSError:
        gateway = None
    host, why = container_host(found.engine.url, env, hint, gateway)
    return Backend(
        "testcontainers", f"{found.reason}; containers reached at {host}: {why}", found.engine, host
    )


def use_engine(engine: Engine, environ: MutableMapping[str, str]) -> None:
    """Point testcontainers (which reads DOCKER_HOST, not our discovery) at `engine`;
    for an engine in a VM, let its reaper mount the VM's socket, unless already set."""
    environ["DOCKER_HOST"] = engine.url
    if engine.ryuk_socket:
        environ.setdefault("TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE", engine.ryuk_socket)


def container_hint(root: Path = Path("/")) -> str | None:
    """Why these tests seem to run inside a container, or None."""
    for marker in (".dockerenv", "run/.containerenv"):
        if (root / marker).exists():
            return f"/{marker} exists"
    try:
        cgroup = (root / "proc/1/cgroup").read_text()
    except OSError:
        return None
    for word in ("docker", "kubepods", "libpod", "containerd", "lxc"):
        if word in cgroup:
            return f"/proc/1/cgroup mentions {word}"
    return None


def default_gateway(route_table: str) -> str | None:
    """The default route's gateway from the text of /proc/net/route (no `ip` needed)."""
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return None


def ping_engine(url: str) -> str | None:
    """None when a Docker API answers at `url`, else what went wrong."""
    with warnings.catch_warnings():
        # When no engine answers, the SDK drops its socket unclosed; that ResourceWarning
        # is the SDK's, and `filterwarnings = error` must not turn it into our failure.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            return _ping(url)
        finally:
            gc.collect()  # release a dropped socket while the warning is still ignored


def _ping(url: str) -> str | None:
    """The ping itself, for `ping_engine`."""
    try:
        import docker  # type: ignore[import-untyped]  # comes with testcontainers

        # from_env, not DockerClient(base_url=...): it keeps DOCKER_TLS_VERIFY and
        # DOCKER_CERT_PATH for a TLS endpoint.
        client = docker.from_env(
            environment={**os.environ, "DOCKER_HOST": url},
            timeout=3,
            use_ssh_client=url.startswith("ssh://"),
        )
    except Exception as error:  # no package, bad URL, no permission
        return _short(error)
    try:
        return None if client.ping() else "ping said no"
    except Exception as error:
        return _short(error)
    finally:
        client.close()


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) <= 120 else f"{text[:117]}..."


def _current_context(env: Mapping[str, str], config_dir: Path) -> tuple[str | None, str]:
    if env.get("DOCKER_CONTEXT"):
        return env["DOCKER_CONTEXT"], "DOCKER_CONTEXT"
    try:
        config = json.loads((config_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None, ""
    context = config.get("currentContext") if isinstance(config, dict) else None
    return (context, "currentContext in config.json") if isinstance(context, str) else (None, "")


def _context_host(config_dir: Path, name: str) -> str | None:
    """Endpoints.docker.Host of a context, stored under the SHA-256 of its name."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    try:
        meta = json.loads((config_dir / "contexts/meta" / digest / "meta.json").read_text())
        host = meta["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return host if isinstance(host, str) and host else None


def _ryuk_socket(host: str, home: Path) -> str | None:
    """A context pointing at a socket in the home folder is a VM engine's (Colima...)."""
    url = urllib.parse.urlparse(host)
    if url.scheme == "unix" and Path(url.path).is_relative_to(home):
        return "/var/run/docker.sock"
    return None


def _testcontainers_property(path: Path, key: str) -> str | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() == key and value.strip():
            return value.strip()
    return None
