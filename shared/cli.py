"""`coinstream`: the operator's command line (setup, migrations, topics, running a service)."""

import asyncio
import importlib
from typing import Annotated

import typer

from shared import kafka_admin, migrations
from shared.settings import InfraSettings

app = typer.Typer(no_args_is_help=True, help="Operate a coinstream deployment.")


@app.command()
def topics() -> None:
    """Create every topic (and its dead-letter topic) that does not exist yet."""
    settings = InfraSettings()
    created = asyncio.run(
        kafka_admin.ensure_topics(
            settings.kafka_bootstrap_servers,
            partitions=settings.topic_partitions,
            replication_factor=settings.topic_replication_factor,
        )
    )
    typer.echo(f"topics: {len(created)} created")


@app.command()
def migrate(
    service: Annotated[str, typer.Argument(help="a service name, or 'all'")] = "all",
) -> None:
    """Apply pending schema migrations of one service or of all of them."""
    settings = InfraSettings()
    names = migrations.SERVICES if service == "all" else (service,)
    for name in names:
        if name not in migrations.SERVICES:
            raise typer.BadParameter(f"unknown service {name!r}")
        applied = migrations.apply(settings.database_url, name)
        typer.echo(f"{name}: {len(applied)} migration(s) applied")


@app.command()
def setup() -> None:
    """Create the topics and apply every service's migrations (idempotent)."""
    topics()
    migrate("all")


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="payment, wallet, gifting or payout")],
) -> None:
    """Run one service in the foreground (Kafka consumers, outbox relay, HTTP side)."""
    if service not in migrations.SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}")
    importlib.import_module(f"services.{service}.main").run()


if __name__ == "__main__":
    app()
