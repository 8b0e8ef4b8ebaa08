"""Helpers for gifting tests: gift requests as apps send them, funding, outcomes."""

from datetime import datetime
from typing import Any

from devstack import Endpoints
from shared import topics
from shared.contracts import utc_now
from tests.integration.wallet_support import as_message, completed
from tests.support import TopicReader, eventually, publish, unique

OUTCOMES = (topics.GIFT_SENT, topics.GIFT_REJECTED)


def gift_request(
    sender: str,
    creator: str,
    gift_id: str = "rose",
    quantity: int = 1,
    *,
    stream_id: str | None = "default",
    video_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": unique("gift"),
        "sender_id": sender,
        "creator_id": creator,
        "gift_id": gift_id,
        "quantity": quantity,
        "occurred_at": "2026-11-22T12:00:00+00:00",
    }
    if stream_id is not None:
        body["stream_id"] = unique("stream") if stream_id == "default" else stream_id
    if video_id is not None:
        body["video_id"] = video_id
    return body


async def send_gifts(infra: Endpoints, requests: list[dict[str, Any]]) -> None:
    await publish(infra, topics.GIFT_REQUESTED, [(r["sender_id"], r) for r in requests])


async def fund(infra: Endpoints, reader: TopicReader, coins: dict[str, int]) -> None:
    """Credit users through the wallet as payment does (purchase-completed) and wait."""
    purchases = [completed(user, coins=amount) for user, amount in coins.items()]
    await publish(infra, topics.PURCHASE_COMPLETED, [as_message(p) for p in purchases])
    await reader.wait_for_all(
        topics.COINS_CREDITED, "payment_id", [p.payment_id for p in purchases], timeout_s=120
    )


async def outcomes_of(
    reader: TopicReader, requests: list[dict[str, Any]], *, timeout_s: float = 60.0
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every outcome (topic, body) of each request, once each request has at least one."""
    wanted = {r["request_id"] for r in requests}

    async def all_answered() -> dict[str, list[tuple[str, dict[str, Any]]]] | None:
        found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for topic in OUTCOMES:
            for body in reader.matching(topic):
                if body.get("request_id") in wanted:
                    found.setdefault(body["request_id"], []).append((topic, body))
        return found if len(found) == len(wanted) else None

    return await eventually(all_answered, timeout_s=timeout_s)


async def one_outcome(
    reader: TopicReader, request: dict[str, Any], *, timeout_s: float = 60.0
) -> tuple[str, dict[str, Any]]:
    [outcome] = (await outcomes_of(reader, [request], timeout_s=timeout_s))[request["request_id"]]
    return outcome


class Clock:
    """A wallet clock a test can set; unset, it is the real time."""

    def __init__(self) -> None:
        self.now: datetime | None = None

    def __call__(self) -> datetime:
        return self.now or utc_now()
