"""Consuming a batch: parse it, dead-letter what cannot be processed, apply the rest.

Two kinds of bad message never stop a partition: one that does not parse (bad JSON, a
missing field, a wrong type) and one that parses but can never be applied (a
`PermanentError` from the service, or data the database refuses). The first is found
while parsing; the second by halving a failing batch until the message at fault stands
alone. Both go to `<topic>.dlq`, their neighbours are applied. Anything else is
transient (database down, deadlock, a rebalance race) and the batch is retried.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import asyncpg
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ValidationError

from shared import topics
from shared.errors import PermanentError
from shared.retry import until_done

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


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


def is_permanent(error: BaseException) -> bool:
    """True when retrying cannot help: the message itself is at fault."""
    if isinstance(error, asyncpg.UniqueViolationError):
        return False  # two replicas racing over one message during a rebalance: retry
    return isinstance(
        error,
        PermanentError
        | asyncpg.DataError
        | asyncpg.IntegrityConstraintViolationError
        | asyncpg.RaiseError,
    )


async def process(
    deliveries: Sequence[Delivery[M]],
    apply: Callable[[list[M]], Awaitable[object]],
    dead_letters: "DeadLetters",
) -> None:
    """Apply a batch in one call; retry transient failures; isolate permanent ones."""
    if not deliveries:
        return
    try:
        await until_done(
            lambda: apply([d.message for d in deliveries]),
            retry_if=lambda error: not is_permanent(error),
        )
    except Exception as error:
        if not is_permanent(error):
            raise
        if len(deliveries) == 1:
            reason = getattr(error, "reason", "processing_failed")
            await dead_letters.send(deliveries[0].record, reason=reason, error=_describe(error))
            return
        # Halves in order: the messages around the one at fault keep their sequence.
        middle = len(deliveries) // 2
        await process(deliveries[:middle], apply, dead_letters)
        await process(deliveries[middle:], apply, dead_letters)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
