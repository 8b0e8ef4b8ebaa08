"""`python -m devstack`: run the local real stack (what `make up` / `make down` call)."""

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer

from devstack import stack
from devstack.errors import DevstackError
from devstack.instances import INSTANCES, get_instance

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The local real stack: Kafka, PostgreSQL and the four services, without Docker.",
)

InstanceName = Annotated[
    str,
    typer.Option(
        "--instance", "-i", help=f"stack instance ({', '.join(INSTANCES)}); `test` is pytest's"
    ),
]


# Servers named in the environment are used instead of starting the local ones.
def _external_kafka() -> str | None:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None


def _external_database() -> str | None:
    return os.environ.get("DATABASE_URL") or None


def _run(step: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(step())
    except DevstackError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


@app.command()
def up(instance: InstanceName = "default") -> None:
    """Start Kafka, PostgreSQL and the four services; return when all are ready."""
    _run(
        lambda: stack.up(
            get_instance(instance),
            kafka_bootstrap=_external_kafka(),
            database_url=_external_database(),
        )
    )


@app.command("infra-up")
def infra_up(instance: InstanceName = "default") -> None:
    """Start Kafka and PostgreSQL only, and create topics and schemas."""
    _run(
        lambda: stack.ensure_infra(
            get_instance(instance),
            kafka_bootstrap=_external_kafka(),
            database_url=_external_database(),
        )
    )


@app.command()
def down(instance: InstanceName = "default") -> None:
    """Stop what this instance started (services, Kafka, PostgreSQL); data is kept."""
    _run(lambda: stack.down(get_instance(instance)))


@app.command()
def status(instance: InstanceName = "default") -> None:
    """Show each process of the instance, its pid and whether it answers."""
    rows = _run(lambda: stack.status(get_instance(instance)))
    for row in rows:
        state = "ready" if row.answers else ("not answering" if row.pid else "stopped")
        pid = f"pid {row.pid}" if row.pid else ""
        typer.echo(f"{row.name:<9} {state:<14} {pid:<11} {row.address}")


def main() -> None:
    # Readiness probes poll servers that are still starting; aiokafka logs each refused
    # connection as an error, which is expected here and only noise.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    app(prog_name="python -m devstack")


if __name__ == "__main__":
    main()
