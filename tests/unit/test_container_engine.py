"""Which Docker engine the tests use and where they reach its containers (tests/containers.py).

No engine runs here: fake home and root folders hold socket *paths* (plain files), and
`ping` stands for the Docker API's answer, so the decisions themselves are what is tested.
"""

import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.containers import (
    Engine,
    choose_backend,
    container_hint,
    container_host,
    default_gateway,
    engine_candidates,
    find_engine,
    ping_engine,
    use_engine,
)

# /proc/net/route of a container on a Docker bridge: default route via 172.17.0.1.
ROUTES = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def answers(*urls: str) -> Callable[[str], str | None]:
    """A ping that answers at `urls` only."""
    return lambda url: None if url in urls else "connection refused"


def add_context(home: Path, name: str, host: str, current: bool = True) -> None:
    meta = home / ".docker/contexts/meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host}}})
    )
    if current:
        (home / ".docker/config.json").write_text(json.dumps({"currentContext": name}))


def test_local_socket_is_reached_on_loopback(home: Path, root: Path) -> None:
    sock = touch(root / "var/run/docker.sock")
    backend = choose_backend({}, home, answers(f"unix://{sock}"), root)
    assert backend.name == "testcontainers"
    assert backend.engine == Engine(f"unix://{sock}", f"Docker Engine socket found at {sock}")
    assert backend.host == "127.0.0.1"
    assert "local socket" in backend.reason


def test_remote_docker_host_is_the_only_candidate_and_the_address(home: Path, root: Path) -> None:
    touch(root / "var/run/docker.sock")  # present, but DOCKER_HOST decides
    env = {"DOCKER_HOST": "tcp://build-box.example:2376"}
    candidates, _ = engine_candidates(env, home, root)
    assert candidates == [
        Engine("tcp://build-box.example:2376", "DOCKER_HOST=tcp://build-box.example:2376")
    ]
    backend = choose_backend(env, home, answers("tcp://build-box.example:2376"), root)
    assert backend.host == "build-box.example"
    assert backend.reason.startswith("DOCKER_HOST=tcp://build-box.example:2376")


def test_remote_docker_host_that_does_not_answer_falls_back_to_devstack_saying_why(
    home: Path, root: Path
) -> None:
    touch(root / "var/run/docker.sock")
    backend = choose_backend({"DOCKER_HOST": "tcp://build-box.example:2376"}, home, answers(), root)
    assert (backend.name, backend.engine) == ("devstack", None)
    assert "DOCKER_HOST=tcp://build-box.example:2376, but it did not answer" in backend.reason
    assert "connection refused" in backend.reason


def test_ssh_docker_host_is_reached_at_its_host_name() -> None:
    assert container_host("ssh://ci@build-box.example", {}, None, None)[0] == "build-box.example"


def test_tests_inside_a_container_reach_a_local_socket_engine_through_the_gateway(
    home: Path, root: Path
) -> None:
    sock = touch(root / "var/run/docker.sock")  # the host's socket, mounted in
    touch(root / ".dockerenv")
    touch(root / "proc/net/route").write_text(ROUTES)
    backend = choose_backend({}, home, answers(f"unix://{sock}"), root)
    assert backend.host == "172.17.0.1"
    assert "inside a container (/.dockerenv exists)" in backend.reason


def test_inside_a_container_without_a_default_route_uses_host_docker_internal() -> None:
    host, why = container_host("unix:///var/run/docker.sock", {}, "/run/.containerenv exists", None)
    assert host == "host.docker.internal"
    assert "/run/.containerenv" in why


def test_inside_a_container_a_remote_engine_is_still_reached_at_its_host() -> None:
    host, _ = container_host("tcp://build-box.example:2375", {}, "/.dockerenv exists", "172.17.0.1")
    assert host == "build-box.example"


def test_host_override_wins(home: Path, root: Path) -> None:
    env = {
        "DOCKER_HOST": "tcp://build-box.example:2376",
        "TESTCONTAINERS_HOST_OVERRIDE": "docker.lan.example",
    }
    backend = choose_backend(env, home, answers(env["DOCKER_HOST"]), root)
    assert backend.host == "docker.lan.example"
    assert "TESTCONTAINERS_HOST_OVERRIDE=docker.lan.example" in backend.reason
    assert container_host(
        "unix:///x.sock", {"TC_HOST": "h.example"}, "/.dockerenv", "10.9.9.9"
    ) == (
        "h.example",
        "TC_HOST=h.example",
    )


@pytest.mark.parametrize(
    ("markers", "cgroup", "hint"),
    [
        ((".dockerenv",), "", "/.dockerenv exists"),
        (("run/.containerenv",), "", "/run/.containerenv exists"),
        ((), "12:pids:/kubepods/besteffort/pod1/abc\n", "/proc/1/cgroup mentions kubepods"),
        ((), "0::/\n", None),
        ((), None, None),
    ],
)
def test_container_hint(
    root: Path, markers: tuple[str, ...], cgroup: str | None, hint: str | None
) -> None:
    for marker in markers:
        touch(root / marker)
    if cgroup is not None:
        touch(root / "proc/1/cgroup").write_text(cgroup)
    assert container_hint(root) == hint


def test_default_gateway_reads_the_route_table() -> None:
    assert default_gateway(ROUTES) == "172.17.0.1"
    assert default_gateway(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[2]) is None


def test_current_context_from_config_json(home: Path, root: Path) -> None:
    colima = f"unix://{home}/.colima/default/docker.sock"
    add_context(home, "colima", colima)
    touch(root / "var/run/docker.sock")  # a context, like DOCKER_HOST, is the only candidate
    candidates, _ = engine_candidates({}, home, root)
    assert candidates == [
        Engine(colima, "context 'colima' (currentContext in config.json)", "/var/run/docker.sock")
    ]


def test_docker_context_variable_beats_config_json(home: Path, root: Path) -> None:
    add_context(home, "colima", f"unix://{home}/.colima/default/docker.sock")
    add_context(home, "remote", "tcp://build-box.example:2376", current=False)
    backend = choose_backend(
        {"DOCKER_CONTEXT": "remote"}, home, answers("tcp://build-box.example:2376"), root
    )
    assert backend.engine == Engine(
        "tcp://build-box.example:2376", "context 'remote' (DOCKER_CONTEXT)"
    )
    assert backend.host == "build-box.example"


def test_docker_config_folder_is_honoured(home: Path, root: Path, tmp_path: Path) -> None:
    add_context(home, "remote", "tcp://build-box.example:2376")
    (home / ".docker").rename(tmp_path / "elsewhere")
    candidates, _ = engine_candidates({"DOCKER_CONFIG": str(tmp_path / "elsewhere")}, home, root)
    assert [engine.url for engine in candidates] == ["tcp://build-box.example:2376"]


def test_default_context_means_the_default_sockets(home: Path, root: Path) -> None:
    sock = touch(root / "var/run/docker.sock")
    (home / ".docker").mkdir()
    (home / ".docker/config.json").write_text(json.dumps({"currentContext": "default"}))
    candidates, _ = engine_candidates({}, home, root)
    assert [engine.url for engine in candidates] == [f"unix://{sock}"]


def test_a_context_without_metadata_is_reported(home: Path, root: Path) -> None:
    touch(root / "var/run/docker.sock")
    candidates, reason = engine_candidates({"DOCKER_CONTEXT": "gone"}, home, root)
    assert candidates == []
    assert reason == "context 'gone' (DOCKER_CONTEXT) names no Docker endpoint"


@pytest.mark.parametrize(
    ("socket_path", "engine", "ryuk_socket"),
    [
        (".docker/run/docker.sock", "Docker Desktop", "/var/run/docker.sock"),
        (".colima/default/docker.sock", "Colima", "/var/run/docker.sock"),
        (".colima/docker.sock", "Colima", "/var/run/docker.sock"),
        (".rd/docker.sock", "Rancher Desktop", "/var/run/docker.sock"),
    ],
)
def test_engine_sockets_in_the_home_folder_are_found(
    home: Path, root: Path, socket_path: str, engine: str, ryuk_socket: str
) -> None:
    sock = touch(home / socket_path)
    discovery = find_engine({}, home, answers(f"unix://{sock}"), root)
    assert discovery.engine == Engine(
        f"unix://{sock}", f"{engine} socket found at {sock}", ryuk_socket
    )


def test_podman_sockets_are_found(home: Path, root: Path, tmp_path: Path) -> None:
    rootless = touch(tmp_path / "run-user/podman/podman.sock")
    rootful = touch(root / "run/podman/podman.sock")
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run-user")}
    candidates, _ = engine_candidates(env, home, root)
    assert candidates == [
        Engine(f"unix://{rootless}", f"Podman socket found at {rootless}"),
        Engine(f"unix://{rootful}", f"Podman socket found at {rootful}"),
    ]


def test_the_first_socket_that_answers_wins_and_the_silent_ones_are_named(
    home: Path, root: Path
) -> None:
    dead = touch(root / "var/run/docker.sock")
    colima = touch(home / ".colima/default/docker.sock")
    discovery = find_engine({}, home, answers(f"unix://{colima}"), root)
    assert discovery.engine is not None
    assert discovery.engine.url == f"unix://{colima}"
    assert find_engine({}, home, answers(), root).reason == (
        f"Docker Engine socket found at {dead}, but it did not answer (connection refused); "
        f"Colima socket found at {colima}, but it did not answer (connection refused)"
    )


def test_no_engine_anywhere_means_devstack_and_says_so(home: Path, root: Path) -> None:
    backend = choose_backend({}, home, answers(), root)
    assert (backend.name, backend.engine) == ("devstack", None)
    assert backend.line() == (
        "coinstream test backend: devstack (no DOCKER_HOST, no Docker context and no Docker "
        "or Podman socket found; using devstack's `test` instance)"
    )


def test_external_stack_wins_and_keeps_the_database_url_out_of_the_line(
    home: Path, root: Path
) -> None:
    env = {
        "COINSTREAM_TEST_KAFKA": "kafka.example:9092",
        "COINSTREAM_TEST_DATABASE_URL": "postgresql://u:s3cret@db.example/x",
        "DOCKER_HOST": "tcp://build-box.example:2376",
    }
    backend = choose_backend(env, home, answers(env["DOCKER_HOST"]), root)
    assert backend.name == "external"
    assert "kafka.example:9092" in backend.line()
    assert "s3cret" not in backend.line()


def test_testcontainers_properties_tc_host(home: Path, root: Path) -> None:
    (home / ".testcontainers.properties").write_text("tc.host=tcp://tc.example:2375\n")
    candidates, _ = engine_candidates({"DOCKER_HOST": "unix:///other.sock"}, home, root)
    assert [engine.url for engine in candidates] == ["tcp://tc.example:2375"]


def test_use_engine_points_testcontainers_at_it() -> None:
    environ = {"TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE": "/mine.sock"}
    use_engine(Engine("unix:///h/.colima/docker.sock", "Colima", "/var/run/docker.sock"), environ)
    assert environ == {
        "DOCKER_HOST": "unix:///h/.colima/docker.sock",
        "TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE": "/mine.sock",  # the user's choice stays
    }
    environ = {}
    use_engine(Engine("unix:///h/.colima/docker.sock", "Colima", "/var/run/docker.sock"), environ)
    assert environ["TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE"] == "/var/run/docker.sock"


class _FakeDockerApi(http.server.BaseHTTPRequestHandler):
    """The two Docker API calls a ping makes: the version, then /_ping."""

    def do_GET(self) -> None:
        body = b"OK" if self.path.endswith("/_ping") else b'{"ApiVersion": "1.45"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_ping_engine_tells_an_answering_api_from_a_silent_port() -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeDockerApi) as api:
        serving = threading.Thread(target=api.serve_forever)
        serving.start()
        try:
            assert ping_engine(f"tcp://127.0.0.1:{api.server_address[1]}") is None
        finally:
            api.shutdown()
            serving.join()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        failure = ping_engine(f"tcp://127.0.0.1:{unused.getsockname()[1]}")
    assert failure is not None and "API version" in failure
