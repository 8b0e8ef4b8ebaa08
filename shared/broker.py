"""The Kafka side of a service: the broker, the delivery policy, dead letters.

Delivery policy, for every subscriber: a group id per service, offsets committed only
after the batch was processed (never FastStream's at-most-once ACK_FIRST), and on an
unexpected error the partition is rewound so nothing is skipped.
"""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError

from shared import topics
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def make_broker(settings: ServiceSettings, registry: CollectorRegistry) -> KafkaBroker:
    """A broker whose producer is idempotent and waits for every in-sync replica."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=f"coinstream-{settings.service_name}",
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        middlewares=[KafkaPrometheusMiddleware(registry=registry, app_name=settings.service_name)],
        # One log line per message would drown real problems at thousands per second.
        log_level=logging.DEBUG,
    )


def outbox_publisher(
    broker: KafkaBroker,
) -> Callable[[str, bytes, bytes, dict[str, str]], Awaitable[Awaitable[object]]]:
    """The relay's way out: send one JSON record, return the future of its acknowledgement."""

    async def publish(
        topic: str, key: bytes, value: bytes, headers: dict[str, str]
    ) -> Awaitable[object]:
        return await broker.publish(
            value,
            topic,
            key=key,
            headers={"content-type": "application/json", **headers},
            no_confirm=True,
        )

    return publish


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
        "decoder": _raw_records,
    }


@dataclass(frozen=True)
class Delivery(Generic[M]):
    """A message that parsed, with the record it came in."""

    record: ConsumerRecord[bytes, bytes]
    message: M


class DeadLetters:
    """Sends messages that cannot be processed to `<topic>.dlq`, value unchanged.

    Headers say why (`dlq.reason`, `dlq.error`) and where it came from
    (`dlq.topic`, `dlq.partition`, `dlq.offset`, `dlq.service`, `dlq.at`).
    """

    def __init__(self, broker: KafkaBroker, *, service: str, registry: CollectorRegistry) -> None:
        self._broker = broker
        self._service = service
        self._counter = Counter(
            "coinstream_dead_letters",
            "Messages sent to a dead-letter topic",
            ["topic", "reason"],
            registry=registry,
        )

    async def send(self, record: ConsumerRecord[bytes, bytes], *, reason: str, error: str) -> None:
        """Dead-letter one record; returns once the broker has it (before the offset moves)."""
        headers = {name: value.decode(errors="replace") for name, value in record.headers}
        headers.update(
            {
                "dlq.reason": reason,
                "dlq.error": error[:2000],
                "dlq.topic": record.topic,
                "dlq.partition": str(record.partition),
                "dlq.offset": str(record.offset),
                "dlq.service": self._service,
                "dlq.at": datetime.now(UTC).isoformat(),
            }
        )
        await self._broker.publish(
            record.value or b"", topics.dlq(record.topic), key=record.key, headers=headers
        )
        self._counter.labels(record.topic, reason).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
        )

    async def sort(
        self, records: tuple[ConsumerRecord[bytes, bytes], ...], model: type[M]
    ) -> list[Delivery[M]]:
        """Parse a batch: what validates is returned in order, the rest is dead-lettered."""
        deliveries: list[Delivery[M]] = []
        for record in records:
            try:
                message = model.model_validate_json(record.value or b"")
            except ValidationError as error:
                reason = "invalid_json" if _is_json_error(error) else "invalid_message"
                await self.send(record, reason=reason, error=_summary(error))
                continue
            deliveries.append(Delivery(record, message))
        return deliveries


def _is_json_error(error: ValidationError) -> bool:
    return any(item["type"] in {"json_invalid", "json_type"} for item in error.errors())


def _summary(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or '<message>'}: {item['msg']}"
        for item in error.errors()
    )
