"""`coinstream`: the operator's command line (setup, migrations, topics, running a service)."""

import asyncio
import importlib
import json
from typing import Annotated

import typer
from aiokafka import AIOKafkaProducer

from shared import contracts, kafka_admin, migrations
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
def publish(
    topic: Annotated[str, typer.Argument(help="e.g. payment.purchase-requested")],
    message: Annotated[str, typer.Argument(help="the JSON message, as an upstream app sends it")],
    key: Annotated[
        str | None, typer.Option(help="the Kafka key; by default the contract's")
    ] = None,
) -> None:
    """Publish one message by hand, keyed as the contract says (user_id, creator_id, ...)."""
    body = json.loads(message)
    model = contracts.REQUESTS.get(topic)
    if key is None:
        if model is None:
            raise typer.BadParameter(f"no contract key known for {topic!r}; pass --key")
        key = str(body[model.key_field])
    asyncio.run(_publish(InfraSettings().kafka_bootstrap_servers, topic, key, message.encode()))
    typer.echo(f"published to {topic} with key {key}")


async def _publish(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


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
