"""shared/subscriptions.py: a service's consumed topics as one table, one consumer."""

from types import SimpleNamespace
from typing import Any, ClassVar, cast

import anyio
import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import ConsumerStoppedError

from shared.contracts import GiftRequested, PurchaseCompleted
from shared.runtime import ServiceKit
from shared.settings import ServiceSettings
from shared.subscriptions import Subscriptions, UseCase, by_topic


def record(topic: str, partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, partition, offset, 0, 0, b"k", b"{}", None, 1, 2, ())


def test_a_batch_is_split_by_topic_keeping_each_partitions_order() -> None:
    batch = (
        record("a", 0, 5),
        record("b", 1, 9),
        record("a", 0, 6),
        record("a", 2, 1),
        record("b", 1, 10),
    )
    assert [(r.partition, r.offset) for r in by_topic(batch, "a")] == [(0, 5), (0, 6), (2, 1)]
    assert [(r.partition, r.offset) for r in by_topic(batch, "b")] == [(1, 9), (1, 10)]
    assert by_topic(batch, "c") == ()


def test_the_table_keeps_the_declared_order_names_and_docstrings() -> None:
    consumed = Subscriptions[Any]()

    @consumed.topic("shop.paid", PurchaseCompleted)
    def on_paid(service: Any) -> UseCase:
        """Credit the coins."""
        return cast(UseCase, service.credit)

    @consumed.topic("shop.gift", GiftRequested)
    def on_gift(service: Any) -> UseCase:
        """Send the gift."""
        return cast(UseCase, service.send)

    assert [(t.topic, t.model, t.name, t.doc) for t in consumed.topics] == [
        ("shop.paid", PurchaseCompleted, "on_paid", "Credit the coins."),
        ("shop.gift", GiftRequested, "on_gift", "Send the gift."),
    ]
    service = SimpleNamespace(credit=object(), send=object())
    assert [t.use_case(service) for t in consumed.topics] == [service.credit, service.send]


def test_a_topic_is_declared_once() -> None:
    consumed = Subscriptions[Any]()
    consumed.topic("shop.paid", PurchaseCompleted)(lambda service: service.credit)
    with pytest.raises(ValueError, match=r"shop\.paid is declared twice"):
        consumed.topic("shop.paid", PurchaseCompleted)(lambda service: service.other)


class _Settings(ServiceSettings):
    service_name: ClassVar[str] = "unit"


class _Consumer:
    """What `get_msg` asks of an aiokafka consumer: `getmany`, answered from a script."""

    def __init__(self, *answers: dict[Any, list[Any]]) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    async def getmany(self, **options: Any) -> dict[Any, list[Any]]:
        self.calls.append(options)
        if not self.answers:
            raise ConsumerStoppedError()  # ends FastStream's consume loop
        return self.answers.pop(0)


async def test_the_consumer_waits_for_records_in_its_poll_and_never_sleeps_after_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    settings.consumer_batch_timeout_ms = 700
    kit = ServiceKit(settings)
    consumed = Subscriptions[Any]()
    consumed.topic("shop.paid", PurchaseCompleted)(lambda service: service.credit)
    kit.include(consumed.router(SimpleNamespace(credit=None), kit.dead_letters, settings))
    (subscriber,) = kit.broker.subscribers  # the one that runs: the router's, included

    async def no_sleep(_: float) -> None:
        raise AssertionError("FastStream's sleep after an empty poll")

    monkeypatch.setattr(anyio, "sleep", no_sleep)
    first, second = record("shop.paid", 0, 5), record("shop.paid", 1, 2)
    consumer = _Consumer({}, {"tp0": [first], "tp1": [second]})
    assert await subscriber.get_msg(consumer) == ()  # type: ignore[attr-defined]
    assert await subscriber.get_msg(consumer) == (first, second)  # type: ignore[attr-defined]
    assert consumer.calls == [{"timeout_ms": 700, "max_records": settings.consumer_max_records}] * 2

    # FastStream's own consume loop polls through it: empty polls, one after the other.
    looping = _Consumer({}, {}, {})
    subscriber.running = True
    await subscriber._run_consume_loop(looping)  # type: ignore[attr-defined]
    assert [call["timeout_ms"] for call in looping.calls] == [700] * 4
