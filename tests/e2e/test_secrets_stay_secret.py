"""No secret of the secure stack ever shows: not in any component's log (services,
Kafka, PostgreSQL), not in a service's environment or command line. The services run
with their passwords in files (KAFKA_SASL_PASSWORD_FILE, `?passfile=` database URLs)."""

import json
from pathlib import Path

import pytest

from devstack.procs import live_pid
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e


def _secret_values(root: Path) -> dict[str, str]:
    """Every secret of the stack: passwords, the webhook secret, private keys' bodies."""
    found: dict[str, str] = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix in (".password", ".secret"):
            found[str(path)] = path.read_text().strip()
        elif path.suffix == ".pem" and b"PRIVATE KEY" in path.read_bytes():
            body = path.read_text().split("-----")[2].split()  # the first key's base64 lines
            found[str(path)] = max(body, key=len)
    return found


def _process_text(pid: int, what: str) -> str:
    return Path(f"/proc/{pid}/{what}").read_bytes().decode(errors="replace")


async def test_no_secret_in_any_log_nor_in_a_services_environment(stack: Stack) -> None:
    secrets = stack.instance.secrets.root
    values = _secret_values(secrets)
    assert len(values) >= 12, sorted(values)  # Kafka users, roles, TLS keys, webhook
    logs = sorted(stack.instance.logs.glob("*.log"))
    assert {"kafka.log", "postgres.log", "wallet.log"} <= {log.name for log in logs}
    for log in logs:
        text = log.read_text(errors="replace")
        leaked = [name for name, value in values.items() if value in text]
        assert not leaked, f"{log} shows the secret(s) of {leaked}"
    for service in stack.urls:
        pid = live_pid(stack.instance.run / f"{service}.pid")
        assert pid is not None, service
        environ, cmdline = _process_text(pid, "environ"), _process_text(pid, "cmdline")
        leaked = [name for name, value in values.items() if value in environ + cmdline]
        assert not leaked, f"{service}'s environment shows the secret(s) of {leaked}"
        assert "KAFKA_SASL_PASSWORD_FILE=" in environ and "passfile=" in environ


async def test_service_logs_are_json_lines_naming_their_service(stack: Stack) -> None:
    for service in stack.urls:
        log = stack.instance.log(service).read_text(errors="replace").splitlines()
        recent = [line for line in log[-20:] if line.strip()]  # this session's process
        assert recent, service
        for line in recent:
            entry = json.loads(line)
            assert entry["service"] == service, line
            assert {"level", "logger", "timestamp", "event"} <= set(entry), line
