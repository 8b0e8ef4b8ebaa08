"""What a service consumes, as a table: topic → message model → use case.

Each service declares its topics once (`Subscriptions`, in its `handlers.py`), one
function per topic that names the use case and, in its docstring, says what the topic
means to the service (the AsyncAPI document quotes it). `router` turns the table into
**one** Kafka consumer for all of the service's topics: one batch subscriber in the
service's group, whose batches are split by topic and applied topic by topic, in the
table's order, each through `shared.consumer` (parse, dead-letter, apply, retry).

Why one consumer and not one per topic: each consumer of a group costs a fetch loop,
heartbeats and a membership of its own, whether its topic is busy or not. The wallet
consumes seven topics; with a consumer each, an idle wallet spent 64 ms of CPU a second
polling and heartbeating (measured: docs/benchmarks.md), which under load is CPU
taken from the one busy topic. One consumer also joins the group once, so a restart
or a scale-out rebalances once.

What it changes: a batch may hold records of several topics, and they are applied one
topic after another (each in its own transaction), so a topic whose use case is slow
(a card provider taking seconds) delays the others' records in the same batch; offsets
are committed for the whole batch once every topic's part is applied. A batch that
fails as a whole (an error the consumer does not handle) is rewound as a whole, and
the parts already applied are repeated harmlessly: every use case is idempotent by its
inbox. Each partition keeps its order.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from pydantic import BaseModel

from shared.broker import FetchPacing, batch_subscription, poll_without_sleeping
from shared.consumer import DeadLetters, process
from shared.settings import ServiceSettings

S = TypeVar("S")  # the service
M = TypeVar("M", bound=BaseModel)

UseCase = Callable[[list[Any]], Awaitable[object]]
Records = tuple[ConsumerRecord[bytes, bytes], ...]


@dataclass(frozen=True)
class Topic(Generic[S]):
    """One topic a service consumes: its model, and which use case applies it."""

    topic: str
    model: type[BaseModel]
    use_case: Callable[[S], UseCase]
    name: str
    """The declaring function's name (`on_<topic>`), as the AsyncAPI document shows it."""
    doc: str
    """What the topic means to the service: the declaring function's docstring."""


class Subscriptions(Generic[S]):
    """A service's consumed topics, declared in the order their records are applied:

    consumed = Subscriptions[WalletService]()

    @consumed.topic(topics.PURCHASE_COMPLETED, PurchaseCompleted)
    def on_purchase_completed(service: WalletService) -> UseCase:
        \"\"\"What the topic means to the service.\"\"\"
        return service.purchases.credit
    """

    def __init__(self) -> None:
        self._topics: dict[str, Topic[S]] = {}

    def topic(
        self, topic: str, model: type[M]
    ) -> Callable[[Callable[[S], UseCase]], Callable[[S], UseCase]]:
        def declare(use_case: Callable[[S], UseCase]) -> Callable[[S], UseCase]:
            if topic in self._topics:
                raise ValueError(f"{topic} is declared twice")
            self._topics[topic] = Topic(
                topic, model, use_case, use_case.__name__, use_case.__doc__ or ""
            )
            return use_case

        return declare

    @property
    def topics(self) -> list[Topic[S]]:
        return list(self._topics.values())

    def router(
        self, service: S, dead_letters: DeadLetters, settings: ServiceSettings
    ) -> KafkaRouter:
        """One batch subscriber for every declared topic, in the service's group."""
        handlers = [(t.topic, t.model, t.use_case(service)) for t in self._topics.values()]
        router = KafkaRouter()
        pacing = FetchPacing(settings)

        async def consume(message: KafkaMessage) -> None:
            records: Records = message.raw_message
            pacing.records_came(message.consumer)
            for topic, model, use_case in handlers:
                part = by_topic(records, topic)
                if part:
                    await process(await dead_letters.sort(part, model), use_case, dead_letters)

        subscriber = router.subscriber(*self._topics, **batch_subscription(settings))
        subscriber(consume)
        poll_without_sleeping(subscriber, settings.consumer_batch_timeout_ms)
        return router


def by_topic(records: Records, topic: str) -> Records:
    """The records of one topic, in the order they came (each partition's order)."""
    return tuple(record for record in records if record.topic == topic)
