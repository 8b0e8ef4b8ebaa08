"""shared/subscriptions.py: a service's consumed topics as one table, one consumer."""

from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord

from shared.contracts import GiftRequested, PurchaseCompleted
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
