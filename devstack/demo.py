"""`make demo`: the first flow on the running stack, shown as it happens.

Publishes purchase requests to Kafka as an upstream app would, prints every outcome
event as it arrives, and shows balances over the wallet's HTTP API before and after.
"""

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from shared import topics
from shared.settings import InfraSettings

PAYMENT = "http://127.0.0.1:8081"
WALLET = "http://127.0.0.1:8082"
WATCHED = (topics.PURCHASE_COMPLETED, topics.PURCHASE_FAILED, topics.COINS_CREDITED)

# Wide enough for one event per line when piped (rich assumes 80 columns then).
console = Console(width=None if sys.stdout.isatty() else 110)


def scenario(run: str) -> list[tuple[str, dict[str, Any]]]:
    """(what it shows, purchase request) for each step of the journey."""

    def request(user: str, package: str, amount: int, method: str = "pm_card_ok") -> dict[str, Any]:
        return {
            "request_id": f"demo-{run}-{uuid.uuid4().hex[:6]}",
            "user_id": f"{user}-{run}",
            "package_id": package,
            "price": {"amount_minor": amount, "currency": "USD"},
            "payment_method": method,
            "occurred_at": datetime.now(UTC).isoformat(),
        }

    return [
        ("alice buys 350 coins for $4.99", request("alice", "coins_350", 499)),
        ("bob buys 700 coins for $9.99", request("bob", "coins_700", 999)),
        ("alice buys 70 more coins for $0.99", request("alice", "coins_70", 99)),
        ("carol's app showed a stale price", request("carol", "coins_350", 399)),
        ("dave asks for a package that does not exist", request("dave", "coins_42", 99)),
        ("erin's card is declined", request("erin", "coins_70", 99, "pm_card_declined")),
    ]


async def show_catalog(http: httpx.AsyncClient) -> None:
    packages = (await http.get(f"{PAYMENT}/v1/packages", params={"currency": "USD"})).json()
    table = Table(title="Coin packages (GET /v1/packages)")
    for column in ("package", "coins", "bonus", "price"):
        table.add_column(column, justify="right")
    for p in packages["packages"]:
        price = f"${p['price']['amount_minor'] / 100:.2f}"
        table.add_row(p["package_id"], str(p["coins"]), str(p["bonus_coins"]), price)
    console.print(table)


async def show_balances(http: httpx.AsyncClient, users: list[str], title: str) -> None:
    table = Table(title=title)
    table.add_column("user")
    table.add_column("coins", justify="right")
    for user in users:
        balance = (await http.get(f"{WALLET}/v1/users/{user}/balance")).json()
        table.add_row(user, str(balance["coins"]))
    console.print(table)


def describe(topic: str, body: dict[str, Any]) -> str:
    if topic == topics.PURCHASE_COMPLETED:
        return f"[green]purchase completed[/] {body['user_id']}: {body['coins']} coins paid"
    if topic == topics.PURCHASE_FAILED:
        return f"[red]purchase failed[/] {body['user_id']}: [bold]{body['reason']}[/]"
    return f"[cyan]coins credited[/] {body['user_id']}: +{body['amount']} → {body['balance_after']}"


async def watch(
    consumer: AIOKafkaConsumer, request_ids: set[str], started: float, expected: int
) -> None:
    seen = 0
    while seen < expected:
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            for record in records:
                body = json.loads(record.value)
                if body.get("request_id") in request_ids:
                    seen += 1
                    elapsed = (time.monotonic() - started) * 1000
                    console.print(
                        f"  {elapsed:7.0f} ms  {record.topic:28} {describe(record.topic, body)}"
                    )


async def listen_from_now(consumer: AIOKafkaConsumer) -> None:
    """Wait for the partitions and pin their ends, so nothing sent after is missed."""
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    for partition in consumer.assignment():
        await consumer.position(partition)


async def main() -> None:
    bootstrap = InfraSettings().kafka_bootstrap_servers
    steps = scenario(uuid.uuid4().hex[:4])
    users = list(dict.fromkeys(request["user_id"] for _, request in steps))
    consumer = AIOKafkaConsumer(
        *WATCHED,
        bootstrap_servers=bootstrap,
        group_id=f"demo-{uuid.uuid4().hex[:8]}",  # a group of its own, reading from now on
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await consumer.start()
    await producer.start()
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            await show_catalog(http)
            await show_balances(http, users, "Balances before")
            await listen_from_now(consumer)
            console.rule("Purchase requests published to payment.purchase-requested")
            started = time.monotonic()
            for what, request in steps:
                console.print(f"  → {what}")
                body = json.dumps(request).encode()
                await producer.send_and_wait(
                    topics.PURCHASE_REQUESTED, body, key=request["user_id"].encode()
                )
            console.rule("Outcome events, as they arrive")
            # Three successful purchases each give purchase-completed + coins-credited.
            ids = {request["request_id"] for _, request in steps}
            await asyncio.wait_for(watch(consumer, ids, started, expected=3 * 2 + 3), timeout=60)
            await show_balances(http, users, "Balances after")
        finally:
            await producer.stop()
            await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
