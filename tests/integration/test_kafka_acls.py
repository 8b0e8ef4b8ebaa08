"""Kafka least privilege on the secure stack: each principal writes and reads only what
shared/acl.py grants it, forged outcome events are refused by the broker, and wrong
credentials fail fast with a clear error."""

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from pydantic import SecretStr

import devstack
from devstack import Endpoints
from shared import acl, topics
from shared.dead_letters import existing_topics
from shared.kafka_client import KafkaClientSettings
from tests.support import purchase_request, unique

pytestmark = pytest.mark.integration


def _secured_or_skip(infra: Endpoints) -> None:
    if not infra.secured:
        pytest.skip("this backend has no per-component Kafka principals (no ACLs to test)")


async def _write(kafka: KafkaClientSettings, topic: str, value: bytes, key: str) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def _end_offsets(infra: Endpoints, topic: str) -> dict[TopicPartition, int]:
    kafka = infra.kafka(acl.OPERATOR)
    found = await existing_topics(kafka, [topic])
    reader = AIOKafkaConsumer(**kafka.client_options())
    await reader.start()
    try:
        return dict(await reader.end_offsets([TopicPartition(topic, p) for p in found[topic]]))
    finally:
        await reader.stop()


def _forged_purchase(user: str) -> bytes:
    forged = {
        "event_id": f"evt-forged-{user}",
        "occurred_at": "2026-11-22T12:00:00Z",
        "request_id": "req-forged",
        "payment_id": f"pay_forged_{user}",
        "user_id": user,
        "package_id": "coins_70",
        "coins": 1_000_000,
        "bonus_coins": 0,
        "price": {"amount_minor": 99, "currency": "USD"},
    }
    return json.dumps(forged).encode()


async def test_an_app_cannot_forge_a_purchase_completed(infra: Any) -> None:
    """The attack of issue 9: one message to payment.purchase-completed by hand."""
    _secured_or_skip(infra)
    mallory = unique("mallory")
    before = await _end_offsets(infra, topics.PURCHASE_COMPLETED)
    with pytest.raises(TopicAuthorizationFailedError):
        await _write(
            infra.kafka(acl.APP), topics.PURCHASE_COMPLETED, _forged_purchase(mallory), mallory
        )
    assert await _end_offsets(infra, topics.PURCHASE_COMPLETED) == before  # nothing landed


async def test_an_app_may_write_requests(infra: Any) -> None:
    _secured_or_skip(infra)
    request = purchase_request(user_id=unique("ada"))
    body = json.dumps(request).encode()
    await _write(infra.kafka(acl.APP), topics.PURCHASE_REQUESTED, body, request["user_id"])


@pytest.mark.parametrize(
    "topic",
    [
        topics.COINS_CREDITED,
        topics.DIAMONDS_HOLD_ANSWERED,
        topics.GIFT_DEBIT_ANSWERED,
        topics.PAYOUT_COMPLETED,
        topics.PAYOUT_FAILED,
        topics.PURCHASE_COMPLETED,
    ],
)
async def test_gifting_cannot_write_what_others_publish(infra: Any, topic: str) -> None:
    _secured_or_skip(infra)
    with pytest.raises(TopicAuthorizationFailedError):
        await _write(infra.kafka("gifting"), topic, b"{}", "k")


async def test_each_service_may_dead_letter_what_it_consumes(infra: Any) -> None:
    """Writing its own event topics is what every other test does through the relays;
    here the dead-letter topics (nothing consumes them), and none of another's."""
    _secured_or_skip(infra)
    for service in acl.SERVICES:
        for topic in acl.CONSUMES[service]:
            await _write(infra.kafka(service), topics.dlq(topic), b"an ACL probe", "acl-probe")
        for other in acl.SERVICES:
            if other == service:
                continue
            for topic in set(acl.CONSUMES[other]) - set(acl.CONSUMES[service]):
                with pytest.raises(TopicAuthorizationFailedError):
                    await _write(infra.kafka(service), topics.dlq(topic), b"probe", "acl-probe")


async def test_a_service_cannot_read_another_services_topic(infra: Any) -> None:
    _secured_or_skip(infra)
    consumer = AIOKafkaConsumer(
        topics.PURCHASE_REQUESTED,  # payment's
        **infra.kafka("wallet").client_options(),
        group_id="coinstream-wallet",
        enable_auto_commit=False,
    )
    with pytest.raises(TopicAuthorizationFailedError):
        await consumer.start()
        await consumer.getmany(timeout_ms=5000)
    await consumer.stop()


async def test_a_service_cannot_use_another_services_group(infra: Any) -> None:
    _secured_or_skip(infra)
    consumer = AIOKafkaConsumer(
        topics.PURCHASE_COMPLETED,  # the wallet may read it, but not in payment's group
        **infra.kafka("wallet").client_options(),
        group_id="coinstream-payment",
        enable_auto_commit=False,
    )
    with pytest.raises(GroupAuthorizationFailedError):
        await consumer.start()
        await consumer.getmany(timeout_ms=5000)
    await consumer.stop()


async def test_an_app_reads_outcomes_only_in_its_own_groups(infra: Any) -> None:
    _secured_or_skip(infra)
    allowed = AIOKafkaConsumer(
        topics.PURCHASE_COMPLETED,
        **infra.kafka(acl.APP).client_options(),
        group_id=f"app-acl-test-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    await allowed.start()
    try:
        await allowed.getmany(timeout_ms=500)
    finally:
        await allowed.stop()
    for topic, group in (
        (topics.GIFT_DEBIT_ANSWERED, "app-acl-test"),  # internal topic
        (topics.PURCHASE_COMPLETED, "coinstream-wallet"),  # not an app group
    ):
        consumer = AIOKafkaConsumer(
            topic, **infra.kafka(acl.APP).client_options(), group_id=group, enable_auto_commit=False
        )
        with pytest.raises((TopicAuthorizationFailedError, GroupAuthorizationFailedError)):
            await consumer.start()
            await consumer.getmany(timeout_ms=5000)
        await consumer.stop()


async def test_wrong_credentials_fail_fast_with_the_reason(infra: Any) -> None:
    _secured_or_skip(infra)
    good = infra.kafka("wallet")
    wrong = KafkaClientSettings(
        **{**good.model_dump(), "sasl_password_file": None, "sasl_password": SecretStr("nope")}
    )
    producer = AIOKafkaProducer(**wrong.client_options())
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError):
        async with asyncio.timeout(20):
            await producer.start()
    await producer.stop()
    assert time.monotonic() - started < 10  # refused, not a hang
    assert "nope" not in repr(wrong) and "nope" not in wrong.describe()


async def test_a_service_with_wrong_credentials_exits_and_says_why(infra: Any) -> None:
    _secured_or_skip(infra)
    instance = devstack.get_instance("test")
    with pytest.raises(devstack.DevstackError) as failed:
        # A replica number no other test uses: its own port, pid file and log.
        await devstack.start_service(
            instance,
            "wallet",
            infra,
            replica=7,
            env={"KAFKA_SASL_PASSWORD_FILE": "/dev/null", "CONSUMER_GROUP_PREFIX": "acl-test"},
            timeout_s=60,
        )
    assert "exited while starting" in str(failed.value)
    log = instance.log("wallet-7").read_text(errors="replace")
    assert "cannot connect to Kafka at 127.0.0.1" in log and "as wallet (SCRAM-SHA-512)" in log
    assert "invalid credentials" in log
