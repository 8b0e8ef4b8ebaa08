"""Run one outbox relay batch in a process of its own (the crash test kills it).

Arguments: the database URL and the schema; Kafka comes from the KAFKA_* environment.
"""

import asyncio
import sys

from prometheus_client import CollectorRegistry

from shared.broker import outbox_publisher, relay_producer
from shared.db import Database
from shared.outbox import OutboxRelay, RelayMetrics
from shared.settings import ServiceSettings


class _Settings(ServiceSettings):
    pass


async def main(dsn: str, schema: str) -> None:
    settings = _Settings(database_url=dsn)  # Kafka: the KAFKA_* environment
    registry = CollectorRegistry()
    producer = relay_producer(settings)
    db = Database(dsn, schema=schema)
    await db.open()
    await producer.start()
    relay = OutboxRelay(
        lambda: db.pool,
        schema=schema,
        publish=outbox_publisher(producer),
        metrics=RelayMetrics(registry),
    )
    try:
        print(await relay.publish_batch())
    finally:
        await producer.stop()
        await db.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
