"""What the run sent and what came back, seen from outside: every request as it was
published, and every outcome and dead letter read from the topics as the operator."""

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from devstack.instances import Endpoints
from shared import acl
from shared import topics as t

OUTCOME_TOPICS: dict[str, tuple[str, ...]] = {
    t.PURCHASE_REQUESTED: (t.PURCHASE_COMPLETED, t.PURCHASE_FAILED),
    t.CHARGEBACK_RECEIVED: (t.PURCHASE_REVERSED,),
    t.GIFT_REQUESTED: (t.GIFT_SENT, t.GIFT_REJECTED),
    t.PAYOUT_REQUESTED: (t.PAYOUT_COMPLETED, t.PAYOUT_FAILED),
}
"""Request topic → the topics of its outcome (CONTRACT.md)."""

REQUEST_TOPICS = (*OUTCOME_TOPICS, t.CREATOR_UPDATED)
DLQ_TOPICS = tuple(t.dlq(topic) for topic in REQUEST_TOPICS)
WATCHED = (*(o for outs in OUTCOME_TOPICS.values() for o in outs), *DLQ_TOPICS)


@dataclass
class Request:
    """One request the load sent (its first copy; `copies` counts deliberate duplicates)."""

    request_id: str
    kind: str  # purchase, gift, payout, chargeback
    topic: str
    key: str
    value: bytes
    created_at: float  # wall clock, seconds
    acked: bool = False
    copies: int = 1


@dataclass(frozen=True)
class Outcome:
    topic: str
    body: dict[str, Any]
    at: float  # the outcome record's timestamp, seconds


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class OutcomeLog:
    """Reads the outcome and dead-letter topics from the run's start offsets (no group,
    no commits) and keeps what concerns the run: ids starting with `marker`."""

    endpoints: Endpoints
    start: dict[TopicPartition, int]
    marker: str
    outcomes: dict[str, dict[str, Outcome]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    unparsable: int = 0
    completed: list[dict[str, Any]] = field(default_factory=list)
    """Bodies of the run's purchase-completed events, first copy of each, as they came."""
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "OutcomeLog":
        self._consumer = AIOKafkaConsumer(
            **self.endpoints.kafka(acl.OPERATOR).client_options(), enable_auto_commit=False
        )
        await self._consumer.start()
        partitions = [tp for tp in self.start if tp.topic in WATCHED]
        self._consumer.assign(partitions)
        for tp in partitions:
            self._consumer.seek(tp, self.start[tp])
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None and self._consumer is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except KafkaError:  # the broker is down: the consumer reconnects by itself
                await asyncio.sleep(0.5)
                continue
            for records in batch.values():
                for record in records:
                    self._keep(record.topic, record.value or b"", record.timestamp, record.headers)

    def _keep(self, topic: str, value: bytes, timestamp_ms: int, headers: Any) -> None:
        if topic in DLQ_TOPICS:
            if self.marker.encode() in value:
                self.dead_letters.append(DeadLetter(topic, value, tuple(headers or ())))
            return
        try:
            body = json.loads(value)
        except ValueError:
            self.unparsable += 1
            return
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not isinstance(request_id, str) or not request_id.startswith(self.marker):
            return
        event_id = str(body.get("event_id"))
        events = self.outcomes.setdefault(request_id, {})
        if topic == t.PURCHASE_COMPLETED and event_id not in events:
            self.completed.append(body)
        events[event_id] = Outcome(topic, body, timestamp_ms / 1000)

    def first(self, request_id: str) -> Outcome | None:
        found = self.outcomes.get(request_id)
        return min(found.values(), key=lambda o: o.at) if found else None

    def answered(self, request_ids: set[str]) -> int:
        return sum(1 for r in request_ids if r in self.outcomes)

    async def wait_answered(self, request_ids: set[str], timeout_s: float) -> float:
        """Wait until each request has an outcome (or the deadline); seconds waited."""
        started = time.monotonic()
        while self.answered(request_ids) < len(request_ids):
            if time.monotonic() - started > timeout_s:
                break
            await asyncio.sleep(0.5)
        return time.monotonic() - started
