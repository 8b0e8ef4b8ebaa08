"""The gift saga with a service SIGKILLed between its steps: after a restart every gift
has exactly one outcome, every balance is exact and the ledger audit passes."""

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from shared import topics
from shared.db_roles import READER
from tests.e2e.conftest import Stack
from tests.e2e.support import balances_become, buy, diamonds_become, gift, restart_after_crash
from tests.support import TopicReader, eventually, publish, run_audit, unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Each sender has 70 coins and asks for 85: the first three are sent, the last refused.
GIFTS = [("panda", 3, 15), ("love_bang", 1, 25), ("panda", 4, 20), ("love_bang", 1, 25)]
SENT_COINS = 60


@pytest.mark.parametrize(
    ("service", "crash_at"),
    [
        # Requests recorded and the wallet asked, before the relay sent the asks.
        ("gifting", "gifting.requests.after_commit"),
        # The wallet paid; gifting dies while recording the outcomes.
        ("gifting", "gifting.answers.before_commit"),
        # The wallet dies inside its payment transaction, and right after committing it.
        ("wallet", "wallet.gift.before_commit"),
        ("wallet", "wallet.gift.after_commit"),
        # The wallet's relay dies after publishing answers, before marking them sent.
        ("wallet", "relay.after_publish"),
    ],
)
async def test_a_service_killed_mid_saga_leaves_every_gift_with_one_outcome(
    stack: Stack, infra: Any, service: str, crash_at: str
) -> None:
    senders = [unique("fan") for _ in range(40)]
    creators = [unique("star") for _ in range(3)]
    stream = {creator: unique("stream") for creator in creators}
    async with TopicReader(
        infra,
        (topics.PURCHASE_COMPLETED, topics.COINS_CREDITED, topics.GIFT_SENT, topics.GIFT_REJECTED),
    ) as reader:
        await buy(stack, infra, reader, senders, len(senders), [("coins_70", 99)])
        await eventually(lambda: balances_become(stack, dict.fromkeys(senders, 70)), timeout_s=120)
        requests = [
            gift(sender, creators[n % 3], gift_id, quantity, stream[creators[n % 3]])
            for n, sender in enumerate(senders)
            for gift_id, quantity, _ in GIFTS
        ]

        async def load() -> None:
            await publish(
                infra,
                topics.GIFT_REQUESTED,
                [(r["sender_id"], r) for r in requests],
            )

        await restart_after_crash(stack, service, crash_at, load)
        ids = {r["request_id"] for r in requests}

        async def every_gift_answered() -> Counter[str] | None:
            answered: Counter[str] = Counter()
            for topic in (topics.GIFT_SENT, topics.GIFT_REJECTED):
                # A relay killed mid-publish may repeat an event: same event_id.
                events = {b["event_id"]: b for b in reader.matching(topic)}
                answered.update(b["request_id"] for b in events.values() if b["request_id"] in ids)
            return answered if len(answered) == len(ids) else None

        answered = await eventually(every_gift_answered, timeout_s=120)
        expected_diamonds = {
            creator: Decimal(SENT_COINS * len(senders[i::3])) / 2
            for i, creator in enumerate(creators)
        }
        await eventually(lambda: balances_become(stack, dict.fromkeys(senders, 70 - SENT_COINS)))
        await eventually(lambda: diamonds_become(stack, expected_diamonds))
        sent = {
            b["request_id"] for b in reader.matching(topics.GIFT_SENT) if b["request_id"] in ids
        }
        rejected = [b for b in reader.matching(topics.GIFT_REJECTED) if b["request_id"] in ids]

    assert set(answered.values()) == {1}  # exactly one outcome per request
    assert len(sent) == 3 * len(senders)
    assert {b["reason"] for b in rejected} == {"insufficient_coins"}
    assert not sent & {b["request_id"] for b in rejected}
    returncode, report = await run_audit(stack.endpoints.database(READER))
    assert returncode == 0, report
