"""The four services as separate processes (`python -m services.<name>`), as in production.

End-to-end tests use these helpers to start, kill and restart a service, or to run a
second replica of one (replica n listens 10·n ports above the first).
"""

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.errors import DevstackError
from devstack.instances import REPO_ROOT, Endpoints, Instance
from devstack.procs import live_pid, say, spawn, stop, wait_ready
from shared import acl
from shared.migrations import SERVICES


@dataclass(frozen=True)
class ServiceProcess:
    """A running service process of a stack instance."""

    service: str
    replica: int
    pid: int
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def process_name(service: str, replica: int = 0) -> str:
    """`payment` for the first process of a service, `payment-1` for its second."""
    return service if replica == 0 else f"{service}-{replica}"


def _pid_file(instance: Instance, name: str) -> Path:
    return instance.run / f"{name}.pid"


def infra_env(endpoints: Endpoints, principal: str = acl.OPERATOR) -> dict[str, str]:
    """This process's environment pointed at the given Kafka and PostgreSQL as
    `principal`: a service gets its Kafka user and its database role; the operator
    (set-up) the administrator's database URL and every service's, so that migrations
    run as the role owning each schema. None of this process's own KAFKA_* or
    *DATABASE_URL settings leak in."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KAFKA_") and not k.endswith("DATABASE_URL")
    }
    if principal in SERVICES:
        database = {
            "DATABASE_URL": endpoints.database(principal),
            **_secrets_of(endpoints, principal),
        }
    else:
        database = {
            "DATABASE_URL": endpoints.database_url,
            **{f"{s.upper()}_DATABASE_URL": endpoints.database(s) for s in SERVICES},
        }
    return {**inherited, **endpoints.kafka(principal).environment(), **database}


def _secrets_of(endpoints: Endpoints, service: str) -> dict[str, str]:
    """The files of the local stack's secrets a service reads (never the secrets)."""
    if endpoints.secrets is None:
        return {}
    endpoints.secrets.ensure_jwt_keys()
    files = {"JWT_PUBLIC_KEY_FILE": str(endpoints.secrets.jwt_public_key)}
    if service == "payment":
        files["CHARGEBACK_WEBHOOK_SECRET_FILE"] = str(endpoints.secrets.webhook_secret_file())
    return files


async def http_ready(url: str) -> bool:
    """True when `GET <url>/health/ready` answers 200."""
    # trust_env=False: a developer's HTTP_PROXY must not be asked about 127.0.0.1.
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        try:
            return (await client.get(f"{url}/health/ready")).status_code == 200
        except httpx.HTTPError:
            return False


# `make demo` sets it: the stack's services export their spans to its traces file.
STACK_TRACES_VARIABLE = "COINSTREAM_STACK_TRACES"
_OWN_TRACING = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def traces_file(instance: Instance) -> Path:
    """Where a stack's services write their spans when it traces (JSON lines)."""
    return instance.logs / "traces.jsonl"


def stack_tracing(instance: Instance, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """With COINSTREAM_STACK_TRACES=1, the OTEL_* settings that make a service export its
    spans to the stack's traces file, unless the environment configures tracing itself
    (an OTLP endpoint, an exporter, or tracing disabled: that wins)."""
    if environ.get(STACK_TRACES_VARIABLE, "").lower() not in ("1", "true", "yes"):
        return {}
    if any(environ.get(name) for name in _OWN_TRACING):
        return {}
    return {
        "OTEL_TRACES_EXPORTER": "file",
        "COINSTREAM_TRACES_FILE": str(traces_file(instance)),
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }


async def start_service(
    instance: Instance,
    service: str,
    endpoints: Endpoints,
    *,
    replica: int = 0,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> ServiceProcess:
    """Start a service process unless it already runs; return when /health/ready says 200.

    `env` adds or overrides environment variables of the process (settings of the
    service); Kafka, PostgreSQL and HTTP_PORT come from the instance and `endpoints`.
    """
    if service not in SERVICES:
        raise DevstackError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    name = process_name(service, replica)
    pid_file, log = _pid_file(instance, name), instance.log(name)
    port = instance.service_port(service, replica)
    pid = live_pid(pid_file)
    already = pid is not None
    if pid is None:
        process_env = {
            **infra_env(endpoints, service),
            "HTTP_PORT": str(port),
            "PYTHONUNBUFFERED": "1",  # log lines reach the log file as they happen
            **stack_tracing(instance),
            **(env or {}),
        }
        argv = [sys.executable, "-m", f"services.{service}"]
        pid = spawn(argv, env=process_env, log=log, pid_file=pid_file, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    took = await wait_ready(
        name,
        lambda: http_ready(url),
        log=log,
        timeout_s=timeout_s,
        alive=lambda: live_pid(pid_file) is not None,
    )
    say(f"{name} {'already running' if already else f'ready in {took:.1f}s'} ({url})")
    return ServiceProcess(service, replica, pid, port, log)


# How long a SIGTERMed service may drain before SIGKILL: the batch in hand (15 s at most),
# the relay's flush (10 s) and disconnecting from Kafka (twice 5 s), plus a margin, as the
# Helm chart's terminationGracePeriodSeconds allows.
STOP_GRACE_S = 40.0


async def stop_service(
    instance: Instance,
    service: str,
    *,
    replica: int = 0,
    kill: bool = False,
    grace_s: float = STOP_GRACE_S,
) -> bool:
    """Stop a service process: SIGTERM, a graceful stop (it finishes the batches in hand,
    commits, drains its outbox relay and leaves its group), SIGKILL if it has not exited
    after `grace_s`; `kill=True`: SIGKILL at once, a crash. False when it was not running."""
    pid_file = _pid_file(instance, process_name(service, replica))
    return await stop(pid_file, grace_s=grace_s, kill=kill)


def running_services(instance: Instance) -> dict[str, int]:
    """Process name → pid of every service process of the instance that runs."""
    found: dict[str, int] = {}
    for service in SERVICES:
        for pid_file in (
            *instance.run.glob(f"{service}.pid"),
            *instance.run.glob(f"{service}-*.pid"),
        ):
            pid = live_pid(pid_file)
            if pid is not None:
                found[pid_file.stem] = pid
    return found


async def stop_all_services(instance: Instance) -> list[str]:
    """Stop every service process of the instance, replicas included; returns their names."""
    names = list(running_services(instance))
    for name in names:
        await stop(_pid_file(instance, name), grace_s=STOP_GRACE_S)
    return names
