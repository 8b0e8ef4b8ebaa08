"""The Kafka side of a service: the broker, the delivery policy, the relay's producer.

Delivery policy, for every subscriber: a group id per service, offsets committed only
after the batch was processed (never FastStream's at-most-once ACK_FIRST), and on an
unexpected error the partition is rewound so nothing is skipped.
"""

import logging
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaProducer
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import CollectorRegistry

from shared.outbox import Publish
from shared.settings import ServiceSettings


def make_broker(settings: ServiceSettings, registry: CollectorRegistry) -> KafkaBroker:
    """A broker whose producer is idempotent and waits for every in-sync replica."""
    return KafkaBroker(
        settings.kafka.bootstrap_servers,
        security=settings.kafka.faststream_security(),
        client_id=f"coinstream-{settings.service_name}",
        # Topics come from `coinstream setup`; a service's principal may not create them.
        allow_auto_create_topics=False,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        middlewares=[KafkaPrometheusMiddleware(registry=registry, app_name=settings.service_name)],
        # One log line per message would drown real problems at thousands per second.
        log_level=logging.DEBUG,
    )


def relay_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """The outbox relay's own producer: idempotent, waits for every in-sync replica.

    The relay publishes thousands of ready-made JSON records a second; going through
    aiokafka directly skips the per-message work of FastStream's publish path (about a
    tenth of a busy service's CPU), and the records of one batch share produce requests.
    """
    return AIOKafkaProducer(
        **settings.kafka.client_options(),
        client_id=f"coinstream-{settings.service_name}-relay",
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
    )


def outbox_publisher(producer: AIOKafkaProducer) -> Publish:
    """The relay's way out: send one JSON record, return the future of its acknowledgement."""

    async def publish(
        topic: str, key: bytes, value: bytes, headers: dict[str, str]
    ) -> Awaitable[object]:
        record_headers = [(name, text.encode()) for name, text in headers.items()]
        future: Awaitable[object] = await producer.send(
            topic, value, key=key, headers=[_JSON, *record_headers]
        )
        return future

    return publish


_JSON = ("content-type", b"application/json")


async def _raw_records(message: Any) -> Any:
    # Bodies are validated by `Inbound.sort`, which dead-letters what fails; FastStream
    # must not decode (and possibly fail on) them first.
    return message.raw_message


def batch_subscription(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments for `subscriber(...)`: the delivery policy every service uses."""
    return {
        "batch": True,
        "group_id": settings.group_id,
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "auto_offset_reset": "earliest",
        "max_records": settings.consumer_max_records,
        "batch_timeout_ms": settings.consumer_batch_timeout_ms,
        "fetch_min_bytes": settings.consumer_fetch_min_bytes,
        "fetch_max_wait_ms": settings.consumer_fetch_max_wait_ms,
        # A service runs one consumer per topic in one group; when one joins, the others
        # learn of the rebalance at their next heartbeat. Frequent heartbeats make a
        # (re)start take about a second instead of several.
        "heartbeat_interval_ms": 300,
        "decoder": _raw_records,
    }
