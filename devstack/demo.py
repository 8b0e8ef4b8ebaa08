"""`make demo`: the whole journey on the running stack, shown as it happens.

Viewers buy coins, send gifts to creators in a live stream, creators cash their
diamonds out. Every request is published to Kafka as an upstream app would; every
outcome and wallet event is printed as it arrives; balances (over the wallet's HTTP
API) are shown before and after, then the stream's leaderboard and the ledger audit.

One gift is sent as an app that traces sends it, with a W3C `traceparent`: its trace id
is printed with the spans the services exported for it (when they trace, as `make demo`
starts them: `<stack>/logs/traces.jsonl`) and the `coinstream trace` of its request.
"""

import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from devstack.instances import Endpoints, get_instance, stack_endpoints
from devstack.services import traces_file
from shared import acl, auth, topics
from shared.db_roles import READER
from shared.money import Money

WALLET = "http://127.0.0.1:8082"
GIFTING = "http://127.0.0.1:8083"
PAYOUT = "http://127.0.0.1:8084"
OUTCOMES = {
    topics.PURCHASE_REQUESTED: (topics.PURCHASE_COMPLETED, topics.PURCHASE_FAILED),
    topics.GIFT_REQUESTED: (topics.GIFT_SENT, topics.GIFT_REJECTED),
    topics.PAYOUT_REQUESTED: (topics.PAYOUT_COMPLETED, topics.PAYOUT_FAILED),
}
WALLET_EVENTS = (topics.COINS_CREDITED, topics.COINS_DEBITED, topics.DIAMONDS_CREDITED)
WATCHED = (*(t for pair in OUTCOMES.values() for t in pair), *WALLET_EVENTS)

# Wide enough for one event per line when piped (rich assumes 80 columns then).
console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True)
class Step:
    what: str
    topic: str
    key: str
    body: dict[str, Any]
    traceparent: str | None = None  # sent as an app that traces sends it


class Journey:
    """The scripted requests of one run; ids carry the run's suffix."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.stream = f"live-{run}"
        # The gift followed at the end: its trace starts at the "app" (this demo).
        self.trace_id = os.urandom(16).hex()
        self.followed: Step | None = None

    def who(self, name: str) -> str:
        return f"{name}-{self.run}"

    def _step(self, what: str, topic: str, key: str, **fields: Any) -> Step:
        body = {"request_id": f"demo-{uuid.uuid4().hex[:10]}", **fields}
        return Step(what, topic, key, body | {"occurred_at": datetime.now(UTC).isoformat()})

    def traced(self, step: Step) -> Step:
        """`step` sent with a traceparent of this run's trace id; the one followed."""
        traced = Step(
            step.what,
            step.topic,
            step.key,
            step.body,
            f"00-{self.trace_id}-{os.urandom(8).hex()}-01",
        )
        self.followed = traced
        return traced

    def buy(self, what: str, user: str, package: str, cents: int, card: str = "pm_card_ok") -> Step:
        return self._step(
            what,
            topics.PURCHASE_REQUESTED,
            self.who(user),
            user_id=self.who(user),
            package_id=package,
            price={"amount_minor": cents, "currency": "USD"},
            payment_method=card,
        )

    def gift(self, what: str, sender: str, creator: str, gift: str, quantity: int = 1) -> Step:
        return self._step(
            what,
            topics.GIFT_REQUESTED,
            self.who(sender),
            sender_id=self.who(sender),
            creator_id=self.who(creator),
            gift_id=gift,
            quantity=quantity,
            stream_id=self.stream,
        )

    def cash_out(self, what: str, creator: str, diamonds: int) -> Step:
        return self._step(
            what,
            topics.PAYOUT_REQUESTED,
            self.who(creator),
            creator_id=self.who(creator),
            diamonds=diamonds,
        )

    def creators(self) -> list[tuple[str, dict[str, Any]]]:
        """What the identity system reports about the creators (no answer is published)."""
        return [
            (
                self.who(name),
                {
                    "creator_id": self.who(name),
                    "verified": verified,
                    "payout_method": method,
                    "currency": currency,
                    "occurred_at": datetime.now(UTC).isoformat(),
                },
            )
            for name, verified, method, currency in (
                ("grace", True, "po_bank_ok", "USD"),
                ("heidi", True, "po_bank_flaky", "EUR"),
                ("ivan", False, "po_bank_ok", "USD"),
            )
        ]

    def phases(self) -> list[tuple[str, list[Step]]]:
        return [
            (
                "Viewers buy coins (payment.purchase-requested)",
                [
                    self.buy("alice buys 17,500 coins for $249.99", "alice", "coins_17500", 24999),
                    self.buy("bob buys 7,000 coins for $99.99", "bob", "coins_7000", 9999),
                    self.buy("carol's app showed a stale price", "carol", "coins_350", 399),
                    self.buy("erin's card is declined", "erin", "coins_70", 99, "pm_card_declined"),
                ],
            ),
            (
                f"Gifts in live stream {self.stream} (gifting.gift-requested)",
                [
                    self.traced(
                        self.gift(
                            "alice sends grace an Interstellar", "alice", "grace", "interstellar"
                        )
                    ),
                    self.gift("bob sends heidi 9 Concerts", "bob", "heidi", "concert", 9),
                    self.gift("bob sends grace 3 Roses", "bob", "grace", "rose", 3),
                    self.gift("alice sends ivan 2 Concerts", "alice", "ivan", "concert", 2),
                    self.gift("alice tries to gift herself", "alice", "alice", "rose"),
                    self.gift("bob cannot afford a Universe", "bob", "grace", "universe"),
                ],
            ),
            (
                "Creators cash out (payout.payout-requested)",
                [
                    self.cash_out("grace cashes out 4,000 diamonds", "grace", 4000),
                    self.cash_out("heidi cashes out 2,000 (her bank is flaky)", "heidi", 2000),
                    self.cash_out("ivan is not verified", "ivan", 500),
                    self.cash_out("grace asks for 10 diamonds", "grace", 10),
                ],
            ),
        ]


def describe(topic: str, body: dict[str, Any]) -> str:
    """One readable line per event."""
    match topic:
        case topics.PURCHASE_COMPLETED:
            return f"[green]purchase completed[/] {body['user_id']}: {body['coins']} coins"
        case topics.GIFT_SENT:
            return (
                f"[green]gift sent[/] {body['sender_id']} → {body['creator_id']}: "
                f"{body['quantity']} x {body['gift_id']}, {body['coins']} coins = "
                f"{body['diamonds']} diamonds"
            )
        case topics.PAYOUT_COMPLETED:
            amount = body["amount"]
            return (
                f"[green]payout completed[/] {body['creator_id']}: {body['diamonds']} diamonds = "
                f"{Money.model_validate(amount)}"
            )
        case topics.COINS_CREDITED | topics.COINS_DEBITED | topics.DIAMONDS_CREDITED:
            what = topic.split(".")[-1].replace("-", " ")
            sign = "-" if topic == topics.COINS_DEBITED else "+"
            change = f"{sign}{body['amount']} → {body['balance_after']}"
            return f"[cyan]{what}[/] {body['user_id']}: {change}"
    who = body.get("user_id") or body.get("sender_id") or body.get("creator_id")
    return f"[red]{topic.split('.')[-1]}[/] {who}: [bold]{body.get('reason')}[/]"


async def run_phase(
    producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, title: str, steps: list[Step]
) -> None:
    console.rule(title)
    for step in steps:
        console.print(f"  → {step.what}")
        headers = [("traceparent", step.traceparent.encode())] if step.traceparent else None
        await producer.send_and_wait(
            step.topic, json.dumps(step.body).encode(), key=step.key.encode(), headers=headers
        )
    console.print("  [dim]events, as they arrive:[/]")
    outcome_topics = {t for step in steps for t in OUTCOMES[step.topic]}
    waiting = {step.body["request_id"] for step in steps}
    ours = set(waiting)
    started = time.monotonic()
    while waiting:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for record in records:
                body = json.loads(record.value or b"{}")
                if body.get("request_id") not in ours:
                    continue
                elapsed = (time.monotonic() - started) * 1000
                console.print(f"  {elapsed:7.0f} ms  {describe(record.topic, body)}")
                if record.topic in outcome_topics:
                    waiting.discard(body["request_id"])


async def show_balances(http: httpx.AsyncClient, journey: Journey, title: str) -> None:
    table = Table(title=title)
    for column in ("account", "coins", "diamonds", "on hold", "frozen"):
        table.add_column(column, justify="right")
    for name in ("alice", "bob", "carol", "erin", "grace", "heidi", "ivan"):
        b = (await http.get(f"{WALLET}/v1/users/{journey.who(name)}/balance")).json()
        table.add_row(
            b["user_id"],
            str(b["coins"]),
            str(b["diamonds"]),
            str(b["diamonds_on_hold"]),
            "yes" if b["frozen"] else "",
        )
    console.print(table)


async def show_leaderboard(http: httpx.AsyncClient, journey: Journey) -> None:
    board = (await http.get(f"{GIFTING}/v1/streams/{journey.stream}/leaderboard")).json()
    table = Table(title=f"Leaderboard of {journey.stream}")
    table.add_column("sender")
    table.add_column("coins", justify="right")
    for entry in board["entries"]:
        table.add_row(entry["sender_id"], str(entry["coins"]))
    console.print(table)


async def settle(http: httpx.AsyncClient, journey: Journey) -> None:
    """Wait until nothing is on hold: the wallet has posted or voided every payout's hold."""
    for _ in range(100):
        balances = [
            (await http.get(f"{WALLET}/v1/users/{journey.who(name)}/balance")).json()
            for name in ("grace", "heidi", "ivan")
        ]
        if all(b["diamonds_on_hold"] == 0 for b in balances):
            return
        await asyncio.sleep(0.1)


def _endpoints() -> Endpoints:
    return stack_endpoints(get_instance("default"))


def _operator_auth() -> dict[str, str]:
    """The HTTP reads' bearer token: the operator scope (the demo reads everyone's
    balance), signed with the local stack's dev key."""
    key = get_instance("default").secrets.jwt_private_key
    return {"Authorization": f"Bearer {auth.mint_token(key, 'demo', operator=True)}"}


async def audit() -> None:
    """The ledger audit, run as an operator runs it."""
    console.rule("Ledger audit (coinstream-audit)")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.wallet.audit",
        env={**os.environ, "DATABASE_URL": _endpoints().database(READER), "COLUMNS": "120"},
    )
    await process.wait()


async def follow(journey: Journey) -> None:
    """The followed gift: its trace id, the spans the services exported for it, and the
    `coinstream trace` of its request, run as an operator runs it."""
    step = journey.followed
    assert step is not None
    request_id = step.body["request_id"]
    console.rule(f"One gift, followed: {step.what}")
    console.print(f"  request_id [bold]{request_id}[/]   trace id [bold]{journey.trace_id}[/]")
    spans = await spans_of(journey.trace_id)
    if spans:
        console.print(f"  [dim]its spans ({traces_file(get_instance('default'))}):[/]")
        for depth, span in span_tree(spans):
            took = (span["end"] - span["start"]) / 1e6
            service = span["resource"]["attributes"].get("service.name", "?")
            console.print(f"  {'  ' * depth}{service:<8} {span['name']}  [dim]{took:.1f} ms[/]")
    else:
        console.print(
            "  [yellow]no spans: the stack's services do not trace[/] (started by `make up`; "
            "`make down demo` starts them tracing, see docs/operations.md#traces)"
        )
    console.print(f"  [dim]$ coinstream trace {request_id}[/]")
    endpoints = _endpoints()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.cli",
        "trace",
        request_id,
        "--dlq-timeout",
        "10",
        env={
            **os.environ,
            **endpoints.kafka(acl.OPERATOR).environment(),
            "DATABASE_URL": endpoints.database(READER),
            "COLUMNS": "120",
        },
    )
    await process.wait()


async def spans_of(trace_id: str, wait_s: float = 5.0) -> list[dict[str, Any]]:
    """The spans of `trace_id` in the stack's traces file, once the last hop's are there
    (the services export every half second)."""
    path = traces_file(get_instance("default"))
    deadline = time.monotonic() + wait_s
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            found = [
                span
                for line in path.read_text().splitlines()
                if trace_id in line
                and (span := json.loads(line))["context"]["trace_id"] == f"0x{trace_id}"
            ]
            if any(s["name"] == f"{topics.GIFT_SENT} publish" for s in found):
                return found
        else:  # the services were started without the stack's traces file
            return []
        await asyncio.sleep(0.25)
    return found


def span_tree(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Spans in tree order (parents first, siblings by start), each with its depth."""
    for span in spans:
        span["start"] = _nanos(span["start_time"])
        span["end"] = _nanos(span["end_time"])
    ids = {span["context"]["span_id"] for span in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span["parent_id"] if span["parent_id"] in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["start"]):
            ordered.append((depth, span))
            walk(span["context"]["span_id"], depth + 1)

    walk(None, 0)
    return ordered


def _nanos(text: str) -> int:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(at.timestamp() * 1e9)


async def main() -> None:
    kafka = _endpoints().kafka(acl.APP)  # as an upstream app: requests in, outcomes out
    journey = Journey(uuid.uuid4().hex[:4])
    consumer = AIOKafkaConsumer(
        *WATCHED,
        **kafka.client_options(),
        group_id=f"app-demo-{uuid.uuid4().hex[:8]}",  # a group of its own, reading from now on
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(**kafka.client_options(), enable_idempotence=True)
    await consumer.start()
    await producer.start()
    async with httpx.AsyncClient(timeout=10, headers=_operator_auth()) as http:
        try:
            for key, update in journey.creators():
                await producer.send_and_wait(
                    topics.CREATOR_UPDATED, json.dumps(update).encode(), key=key.encode()
                )
            await show_balances(http, journey, "Balances before")
            while not consumer.assignment():  # pin the ends: nothing sent after is missed
                await consumer.getmany(timeout_ms=100)
            for partition in consumer.assignment():
                await consumer.position(partition)
            for title, steps in journey.phases():
                async with asyncio.timeout(60):
                    await run_phase(producer, consumer, title, steps)
            await settle(http, journey)
            await show_balances(http, journey, "Balances after")
            await show_leaderboard(http, journey)
            await audit()
            await follow(journey)
        finally:
            await producer.stop()
            await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
