"""The mixed load: paced purchases, gifts, payouts, chargebacks, deliberate duplicates
and a few malformed messages, published as an upstream app publishes them.

Every id carries the run's marker, so the checker tells this run's traffic from
anything else on the topics. A send the broker does not acknowledge (it is being
killed) is tried again with the same bytes: the request id makes that harmless.
"""

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from chaos.observe import OutcomeLog, Request
from devstack.instances import Endpoints
from shared import acl
from shared import topics as t

PACKAGES = (("coins_700", 999), ("coins_700", 999), ("coins_3500", 4999), ("coins_70", 99))
CARDS = ("pm_card_ok",) * 17 + ("pm_card_declined", "pm_card_flaky", "pm_card_flaky")
# (gift, most at once): creators must gather the 2,000 diamonds of a payout.
GIFTS = (("rose", 5), ("panda", 3), ("love_bang", 2), ("sun_cream", 2), ("concert", 2)) * 2 + (
    ("im_very_rich", 1),
)
# creator name suffix → (verified, payout method): most are paid, one is refused by the
# bank (its diamonds come back), one is not verified.
CREATORS = {
    **{f"c{n}": (True, "po_bank_ok") for n in range(6)},
    "c-rejected": (True, "po_bank_rejected"),
    "c-unverified": (False, "po_bank_ok"),
}
MIX = (
    ("purchase", 40),
    ("gift", 36),
    ("payout", 4),
    ("chargeback", 4),
    ("duplicate", 14),
    ("malformed", 2),
)
SEND_DEADLINE_S = 180.0


def now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Load:
    """The load generator of one run. `rate`: requests a second (duplicates included)."""

    endpoints: Endpoints
    log: OutcomeLog
    rng: random.Random
    rate: float
    marker: str
    requests: dict[str, Request] = field(default_factory=dict)
    malformed: list[bytes] = field(default_factory=list)
    duplicates_sent: int = 0
    send_retries: int = 0
    unsent: int = 0
    _producer: AIOKafkaProducer | None = None
    _sends: set[asyncio.Task[None]] = field(default_factory=set)
    _charged_back: set[str] = field(default_factory=set)
    _count: int = 0
    _recent: deque[Request] = field(default_factory=lambda: deque(maxlen=100))

    def creators(self) -> list[str]:
        return [f"{self.marker}{name}" for name in CREATORS]

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            **self.endpoints.kafka(acl.APP).client_options(),
            enable_idempotence=True,
            request_timeout_ms=5000,
        )
        await self._producer.start()
        for name, (verified, method) in CREATORS.items():
            creator = f"{self.marker}{name}"
            body = {
                "creator_id": creator,
                "verified": verified,
                "payout_method": method,
                "currency": "USD",
                "occurred_at": now(),
            }
            await self._send(t.CREATOR_UPDATED, creator, json.dumps(body).encode(), None)

    async def stop(self, *, abandon: bool = False) -> None:
        """Wait for every send still being retried (or, `abandon`, cancel them: the run
        failed), then close the producer."""
        if abandon:
            for send in self._sends:
                send.cancel()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Send at `rate` until `stop` is set."""
        started = time.monotonic()
        while not stop.is_set():
            self._count += 1
            self._next()
            due = started + self._count / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    def _id(self, kind: str) -> str:
        return f"{self.marker}{kind[0]}{self._count}"

    def _next(self) -> None:
        kinds, weights = zip(*MIX, strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        if not getattr(self, f"_{kind}")():  # nothing to gift, charge back or repeat yet
            self._purchase()

    def _request(self, kind: str, topic: str, key: str, body: dict[str, Any]) -> Request:
        body = {**body, "occurred_at": now()}
        request = Request(
            body.get("request_id") or body["chargeback_id"],
            kind,
            topic,
            key,
            json.dumps(body).encode(),
            time.time(),
        )
        self.requests[request.request_id] = request
        self._recent.append(request)
        self._spawn(topic, key, request.value, request)
        return request

    def _purchase(self) -> Request:
        # A user buys a few times, then the next one starts: risk limits are per user.
        user = f"{self.marker}u{self._count // 4}"
        package, cents = self.rng.choice(PACKAGES)
        return self._request(
            "purchase",
            t.PURCHASE_REQUESTED,
            user,
            {
                "request_id": self._id("purchase"),
                "user_id": user,
                "package_id": package,
                "price": {"amount_minor": cents, "currency": "USD"},
                "payment_method": self.rng.choice(CARDS),
            },
        )

    def _gift(self) -> Request | None:
        bought = self.log.completed[-200:]
        if not bought:
            return None
        sender = self.rng.choice(bought)["user_id"]
        gift, most = self.rng.choice(GIFTS)
        if self.rng.random() < 0.02:
            gift = "no_such_gift"
        creator = self.rng.choice(self.creators())
        return self._request(
            "gift",
            t.GIFT_REQUESTED,
            sender,
            {
                "request_id": self._id("gift"),
                "sender_id": sender,
                "creator_id": creator,
                "gift_id": gift,
                "quantity": self.rng.randint(1, most),
                "stream_id": f"{self.marker}live",
            },
        )

    def _payout(self) -> Request:
        creator = self.rng.choice(self.creators())
        return self._request(
            "payout",
            t.PAYOUT_REQUESTED,
            creator,
            {
                "request_id": self._id("payout"),
                "creator_id": creator,
                "diamonds": self.rng.choice((2000, 2000, 2500, 3000)),
            },
        )

    def _chargeback(self) -> Request | None:
        candidates = [
            body
            for body in self.log.completed[-500:]
            if body["payment_id"] not in self._charged_back
        ]
        if not candidates:
            return None
        paid = self.rng.choice(candidates)
        self._charged_back.add(paid["payment_id"])
        return self._request(
            "chargeback",
            t.CHARGEBACK_RECEIVED,
            paid["user_id"],
            {
                "chargeback_id": self._id("chargeback"),
                "payment_id": paid["payment_id"],
                "user_id": paid["user_id"],
            },
        )

    def _duplicate(self) -> Request | None:
        """The same message again, byte for byte, as a retrying app would send it."""
        if not self._recent:
            return None
        again = self.rng.choice(self._recent)
        again.copies += 1
        self.duplicates_sent += 1
        self._spawn(again.topic, again.key, again.value, None)
        return again

    def _malformed(self) -> bool:
        """A message the contract sends to the dead-letter topic: not JSON, not an
        object, or a request without its required fields."""
        mark = f"{self.marker}bad{self._count}"
        topic, value = self.rng.choice(
            (
                (t.PURCHASE_REQUESTED, f"{mark} {{not json".encode()),
                (t.GIFT_REQUESTED, json.dumps([mark, "an array"]).encode()),
                (t.PAYOUT_REQUESTED, json.dumps({"note": mark}).encode()),
            )
        )
        self.malformed.append(value)
        self._spawn(topic, mark, value, None)
        return True

    def _spawn(self, topic: str, key: str, value: bytes, request: Request | None) -> None:
        task = asyncio.create_task(self._send(topic, key, value, request))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, topic: str, key: str, value: bytes, request: Request | None) -> None:
        assert self._producer is not None
        deadline = time.monotonic() + SEND_DEADLINE_S
        while True:
            try:
                await self._producer.send_and_wait(topic, value, key=key.encode())
            except KafkaError:
                if time.monotonic() > deadline:
                    self.unsent += 1
                    return
                self.send_retries += 1
                await asyncio.sleep(0.5)
                continue
            if request is not None:
                request.acked = True
            return
