"""`coinstream trace REQUEST_ID`: one request's whole journey, for support.

It reads, as the operators' read-only role (DATABASE_URL), every service's record of
the request (payment purchases and chargebacks, wallet ledger transactions, holds,
limit requests and clawbacks, gifting gift requests, payout payouts), the outbox rows
whose payload names it (the events it caused, when written and published), the inbox
rows that show a service consumed the request or one of those events, and — with the
operator's Kafka credentials — the dead letters whose body names it (a bounded read of
every `<topic>.dlq`). It prints them as one timeline and a one-line verdict.

Only what is safe to show is read: no payment method, provider reference, fingerprint,
bank details or message body (a dead letter's value is matched, never printed).
"""

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import typer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shared import dead_letters
from shared.dead_letters import DeadLetter, DeadLetterError
from shared.kafka_client import KafkaClientSettings
from shared.reconcile.report import READ_ERRORS, without_password
from shared.settings import InfraSettings
from shared.topics import all_topics

SERVICES = ("payment", "wallet", "gifting", "payout")


@dataclass(frozen=True)
class Step:
    """One line of the timeline: at `at`, `service` did or recorded `what`."""

    at: datetime | None
    service: str
    kind: str  # record | event | consumed | dead_letter
    what: str
    state: str
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "service": self.service,
            "kind": self.kind,
            "what": self.what,
            "state": self.state,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Record:
    """A service's row about the request: its state and times (safe columns only)."""

    service: str
    table: str
    state: str
    times: dict[str, datetime | None]
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def created(self) -> datetime | None:
        return self.times.get("created_at")

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "table": self.table,
            "state": self.state,
            "times": {name: _iso(at) for name, at in self.times.items()},
            "fields": {name: _plain(value) for name, value in self.fields.items()},
        }


@dataclass(frozen=True)
class OutboxEvent:
    """An event (or internal request) a service's outbox holds for the request."""

    service: str
    topic: str
    event_id: str
    created_at: datetime
    published_at: datetime | None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "topic": self.topic,
            "event_id": self.event_id,
            "created_at": _iso(self.created_at),
            "published_at": _iso(self.published_at),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Consumed:
    """An inbox row: `service` applied the message `message_id` of `topic`."""

    service: str
    topic: str
    message_id: str
    processed_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "topic": self.topic,
            "message_id": self.message_id,
            "processed_at": _iso(self.processed_at),
        }


@dataclass(frozen=True)
class Letter:
    """A dead letter whose body names the request (its value is never kept)."""

    coordinates: str
    topic: str
    reason: str
    service: str | None
    at: datetime | None
    error: str

    @classmethod
    def of(cls, letter: DeadLetter) -> "Letter":
        at = _parse_time(letter.header("dlq.at"))
        if at is None:
            at = datetime.fromtimestamp(letter.timestamp_ms / 1000, UTC)
        return cls(
            coordinates=letter.coordinates,
            topic=letter.original_topic,
            reason=letter.reason,
            service=letter.header("dlq.service"),
            at=at,
            error=_short(letter.header("dlq.error") or "", 160),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "coordinates": self.coordinates,
            "topic": self.topic,
            "reason": self.reason,
            "service": self.service,
            "at": _iso(self.at),
            "error": self.error,
        }


@dataclass
class Journey:
    """Everything found about one request_id, and what it says."""

    request_id: str
    now: datetime
    records: list[Record] = field(default_factory=list)
    events: list[OutboxEvent] = field(default_factory=list)
    consumed: list[Consumed] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.records or self.events or self.consumed or self.letters)

    def timeline(self) -> list[Step]:
        steps: list[Step] = []
        for record in self.records:
            steps.extend(_record_steps(record))
        for event in self.events:
            published = (
                f"published +{_ms(event.created_at, event.published_at)}"
                if event.published_at
                else "not published yet"
            )
            detail = f"event_id {event.event_id}; {published}"
            if event.reason:
                detail += f"; reason {event.reason}"
            state = "published" if event.published_at else "in outbox"
            steps.append(Step(event.created_at, event.service, "event", event.topic, state, detail))
        for row in self.consumed:
            steps.append(
                Step(
                    row.processed_at, row.service, "consumed", row.topic, "applied", row.message_id
                )
            )
        for letter in self.letters:
            where = f"{letter.coordinates}; {letter.error}" if letter.error else letter.coordinates
            steps.append(
                Step(
                    letter.at,
                    letter.service or "?",
                    "dead_letter",
                    letter.topic,
                    letter.reason,
                    where,
                )
            )
        order = {"record": 0, "consumed": 1, "event": 2, "dead_letter": 3}
        return sorted(
            steps,
            key=lambda s: (s.at or datetime.max.replace(tzinfo=UTC), order.get(s.kind, 9)),
        )

    def verdict(self) -> str:
        """One line: completed, failed: REASON, reversed, pending in SERVICE since N s,
        dead-lettered: REASON, or unknown request_id."""
        if not self.found:
            return "unknown request_id" + (" (not everything was read)" if self.warnings else "")
        by_table = {(r.service, r.table): r for r in self.records}
        failed = [r for r in self.records if r.state in ("failed", "rejected")]
        if failed:
            return f"failed: {failed[0].fields.get('reason') or failed[0].state}"
        if not self.records:
            reason = self.letters[0].reason if self.letters else "no record"
            return f"dead-lettered: {reason}" if self.letters else "unknown request_id"
        pending = self._pending(by_table)
        if pending is not None:
            service, since = pending
            return f"pending in {service} since {self._age(since)}"
        unpublished = [e for e in self.events if e.published_at is None]
        if unpublished:
            first = min(unpublished, key=lambda e: e.created_at)
            return f"pending in {first.service} (outbox) since {self._age(first.created_at)}"
        purchase = by_table.get(("payment", "purchases"))
        done = "reversed" if purchase is not None and purchase.state == "reversed" else "completed"
        if self.letters:  # e.g. a copy refused as idempotency_conflict
            done += f" ({len(self.letters)} dead letter(s) name it too)"
        return done

    def _pending(self, by_table: dict[tuple[str, str], Record]) -> tuple[str, datetime] | None:
        wallet_has = any(r.service == "wallet" for r in self.records)
        wallet_answered = [e for e in self.events if e.service == "wallet"]
        purchase = by_table.get(("payment", "purchases"))
        if purchase is not None:
            if purchase.state == "pending":
                return "payment", purchase.times.get("created_at") or self.now
            if purchase.state == "completed" and not wallet_has:
                return "wallet", self._published("payment", purchase)
        gift = by_table.get(("gifting", "gift_requests"))
        if gift is not None and gift.state == "pending":
            if wallet_answered:
                return "gifting", self._published("wallet", gift)
            return "wallet", self._published("gifting", gift)
        payout = by_table.get(("payout", "payouts"))
        if payout is not None:
            if payout.state == "holding":
                return "wallet", self._published("payout", payout)
            if payout.state in ("held", "unknown"):
                return "payout", payout.times.get("updated_at") or self.now
        hold = by_table.get(("wallet", "holds"))
        if hold is not None and hold.state == "open":
            return "wallet", hold.created or self.now
        return None

    def _published(self, service: str, record: Record) -> datetime:
        """When `service` handed the request on: its first event's publication (or, not
        published yet, its record's latest time)."""
        times = [e.published_at or e.created_at for e in self.events if e.service == service]
        if times:
            return min(times)
        known = [t for t in record.times.values() if t is not None]
        return max(known) if known else self.now

    def _age(self, since: datetime) -> str:
        seconds = max(0.0, (self.now - since).total_seconds())
        if seconds < 120:
            return f"{seconds:.0f} s"
        if seconds < 7200:
            return f"{seconds / 60:.0f} min"
        return f"{seconds / 3600:.1f} h"

    def as_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "found": self.found,
            "verdict": self.verdict(),
            "at": _iso(self.now),
            "records": [r.as_json() for r in self.records],
            "events": [e.as_json() for e in self.events],
            "consumed": [c.as_json() for c in self.consumed],
            "dead_letters": [d.as_json() for d in self.letters],
            "timeline": [s.as_json() for s in self.timeline()],
            "warnings": self.warnings,
        }


# ─── reading the databases ────────────────────────────────────────────────────────────

# (service, table, the state column's SQL, time columns, other safe columns, WHERE).
# Only safe columns: never payment_method, provider_reference, fingerprint, payout_method.
_RECORD_QUERIES: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...], str], ...] = (
    (
        "payment",
        "purchases",
        "status",
        ("requested_at", "created_at", "charged_at", "updated_at"),
        ("user_id", "package_id", "coins", "bonus_coins", "price_minor", "currency", "reason"),
        "request_id = $1",
    ),
    (
        "payment",
        "chargebacks",
        "outcome",
        ("occurred_at", "received_at"),
        ("payment_id", "user_id"),
        "chargeback_id = $1",
    ),
    (
        "wallet",
        "holds",
        "status",
        ("created_at", "deadline", "closed_at"),
        ("payout_id", "creator_id", "units"),
        "request_id = $1",
    ),
    (
        "wallet",
        "spending_limit_requests",
        "'recorded'",
        ("created_at",),
        (),
        "request_id = $1",
    ),
    (
        "wallet",
        "pending_clawbacks",
        "'waiting for coins'",
        ("received_at",),
        ("payment_id", "user_id", "coins"),
        "request_id = $1",
    ),
    (
        "gifting",
        "gift_requests",
        "status",
        ("requested_at", "created_at", "decided_at"),
        ("sender_id", "creator_id", "gift_id", "quantity", "coins", "diamonds", "reason"),
        "request_id = $1",
    ),
    (
        "payout",
        "payouts",
        "status",
        ("requested_at", "created_at", "hold_deadline", "updated_at"),
        ("payout_id", "creator_id", "diamonds", "amount_minor", "currency", "reason"),
        "request_id = $1",
    ),
)


async def read_database(url: str, request_id: str, journey: Journey) -> None:
    """Fill `journey` from the four schemas, read in one snapshot (read only)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for spec in _RECORD_QUERIES:
                journey.records.extend(await _records(conn, request_id, *spec))
            journey.records.extend(await _ledger(conn, request_id))
            needle = json.dumps({"request_id": request_id}, separators=(",", ":"))[1:-1]
            for service in SERVICES:
                journey.events.extend(await _outbox(conn, service, request_id, needle.encode()))
            for service in SERVICES:
                journey.consumed.extend(await _inbox(conn, service, request_id, journey.events))
    finally:
        await conn.close()


async def _records(
    conn: asyncpg.Connection,
    request_id: str,
    service: str,
    table: str,
    state: str,
    times: tuple[str, ...],
    others: tuple[str, ...],
    where: str,
) -> list[Record]:
    columns = ", ".join((f"{state} AS state", *times, *others))
    rows = await conn.fetch(f"SELECT {columns} FROM {service}.{table} WHERE {where}", request_id)
    return [
        Record(
            service,
            table,
            str(row["state"]),
            {name: row[name] for name in times},
            {name: row[name] for name in others if row[name] is not None},
        )
        for row in rows
    ]


async def _ledger(conn: asyncpg.Connection, request_id: str) -> list[Record]:
    """The wallet's ledger transactions of the request, each with its entries summed by
    account kind (e.g. user_coins +700)."""
    rows = await conn.fetch(
        """
        SELECT t.tx_id, t.kind, t.created_at,
               string_agg(a.kind || ' ' || CASE WHEN e.amount > 0 THEN '+' ELSE '' END
                          || e.amount::text, ', ' ORDER BY e.entry_id) AS entries
        FROM wallet.ledger_transactions t
        LEFT JOIN wallet.ledger_entries e ON e.tx_id = t.tx_id
        LEFT JOIN wallet.accounts a ON a.account_id = e.account_id
        WHERE t.request_id = $1
        GROUP BY t.tx_id, t.kind, t.created_at
        ORDER BY t.tx_id
        """,
        request_id,
    )
    return [
        Record(
            "wallet",
            "ledger_transactions",
            "posted",
            {"created_at": row["created_at"]},
            {"kind": row["kind"], "entries": row["entries"] or ""},
        )
        for row in rows
    ]


async def _outbox(
    conn: asyncpg.Connection, service: str, request_id: str, needle: bytes
) -> list[OutboxEvent]:
    rows = await conn.fetch(
        f"""
        SELECT topic, event_id, payload, created_at, published_at FROM (
            SELECT id, topic, event_id, payload, created_at, published_at
            FROM {service}.outbox WHERE position($1::bytea IN payload) > 0
            UNION ALL  -- published rows move here (kit-0004)
            SELECT id, topic, event_id, payload, created_at, published_at
            FROM {service}.outbox_published WHERE position($1::bytea IN payload) > 0
        ) AS rows ORDER BY id
        """,
        needle,
    )
    found = []
    for row in rows:
        body = _json_object(bytes(row["payload"]))
        if body is None or body.get("request_id") != request_id:
            continue  # the needle inside some other field's text
        reason = body.get("reason")
        found.append(
            OutboxEvent(
                service,
                row["topic"],
                row["event_id"],
                row["created_at"],
                row["published_at"],
                reason if isinstance(reason, str) else None,
            )
        )
    return found


async def _inbox(
    conn: asyncpg.Connection, service: str, request_id: str, events: Sequence[OutboxEvent]
) -> list[Consumed]:
    # Looked up by the inbox's primary key (topic, message_id): the request_id under every
    # topic (which one carried the request is not known here), each event's id under its
    # own. By message_id alone this read the whole inbox, and an index on message_id would
    # cost every message the wallet consumes for the sake of a support tool.
    keys = dict.fromkeys(
        [(topic, request_id) for topic in all_topics()]
        + [(event.topic, event.event_id) for event in events]
    )
    rows = await conn.fetch(
        f"""
        SELECT i.topic, i.message_id, i.processed_at
        FROM unnest($1::text[], $2::text[]) AS k(topic, message_id)
        JOIN {service}.inbox i ON i.topic = k.topic AND i.message_id = k.message_id
        """,
        [topic for topic, _ in keys],
        [message_id for _, message_id in keys],
    )
    return [Consumed(service, r["topic"], r["message_id"], r["processed_at"]) for r in rows]


# ─── dead letters ─────────────────────────────────────────────────────────────────────


def names_request(value: bytes, request_id: str) -> bool:
    """Whether a dead letter's body names `request_id`: its JSON object's `request_id`,
    or — a body that is not a JSON object (malformed, cut short) — a `"request_id": "…"`
    pair in its text."""
    body = _json_object(value)
    if body is not None:
        return body.get("request_id") == request_id
    text = value.decode(errors="replace")
    quoted = re.escape(json.dumps(request_id))
    return re.search(rf'"request_id"\s*:\s*{quoted}', text) is not None


async def read_dead_letters(
    kafka: KafkaClientSettings, request_id: str, *, timeout_s: float
) -> list[Letter]:
    """Every dead letter of every `<topic>.dlq` whose body names the request."""
    letters = await dead_letters.read(kafka, dead_letters.known_dlq_topics(), timeout_s=timeout_s)
    return [
        Letter.of(letter)
        for letter in dead_letters.by_time(letters)
        if not letter.is_stub and names_request(letter.value, request_id)
    ]


async def trace_request(
    request_id: str,
    *,
    database_url: str,
    kafka: KafkaClientSettings | None,
    dlq_timeout_s: float,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Journey:
    """The journey of `request_id`; `kafka` None skips the dead letters. A part that
    cannot be read is named in `warnings`, the rest still shown."""
    journey = Journey(request_id, now())
    try:
        await read_database(database_url, request_id, journey)
    except (*READ_ERRORS, TimeoutError) as error:
        journey.warnings.append(f"database {without_password(database_url)} not read: {error}")
    if kafka is not None:
        try:
            journey.letters = await read_dead_letters(kafka, request_id, timeout_s=dlq_timeout_s)
        except (DeadLetterError, KafkaError, OSError) as error:
            journey.warnings.append(f"dead letters not read: {error}")
    journey.now = now()
    return journey


# ─── the command ──────────────────────────────────────────────────────────────────────


def trace(
    request_id: Annotated[str, typer.Argument(help="the request_id an app sent")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    database_url: Annotated[
        str | None,
        typer.Option(help="default: DATABASE_URL; a read-only role on the four schemas"),
    ] = None,
    dead_letters_: Annotated[
        bool,
        typer.Option(
            "--dead-letters/--no-dead-letters", help="also read every <topic>.dlq (Kafka)"
        ),
    ] = True,
    dlq_timeout: Annotated[
        float, typer.Option(min=1, help="seconds the read of the dead-letter topics may take")
    ] = 30,
) -> None:
    """Show one request's whole journey: each service's record of it (state, times), the
    events it caused, the services that consumed them, any dead letter naming it, and a
    verdict. Exit 0 when the request_id is found, 1 when it is unknown, 2 when it was not
    found and the databases or the dead letters could not be read."""
    settings = InfraSettings()
    journey = asyncio.run(
        trace_request(
            request_id,
            database_url=database_url or settings.database_url,
            kafka=settings.kafka if dead_letters_ else None,
            dlq_timeout_s=dlq_timeout,
        )
    )
    if as_json:
        print(json.dumps(journey.as_json()), flush=True)
    else:
        render(journey, Console(highlight=False))
    # 2, as `coinstream reconcile`: nothing found, but not everything could be read
    raise typer.Exit(0 if journey.found else 2 if journey.warnings else 1)


def render(journey: Journey, out: Console) -> None:
    """The timeline as a table, then the verdict."""
    for warning in journey.warnings:
        out.print(Text(f"warning: {warning}", style="yellow"))
    if journey.found:
        table = Table(title=f"request {journey.request_id}", title_justify="left")
        for column in ("time (UTC)", "service", "", "record / topic", "state"):
            table.add_column(column, no_wrap=True)
        table.add_column("detail", overflow="fold")
        first = next((s.at for s in journey.timeline() if s.at is not None), None)
        for step in journey.timeline():
            at = "" if step.at is None else step.at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
            if step.at is not None and first is not None and step.at != first:
                at += f" +{_ms(first, step.at)}"
            elif step.at is not None:
                at = step.at.astimezone(UTC).strftime("%Y-%m-%d ") + at
            cells = (at, step.service, step.kind, step.what, step.state, step.detail)
            table.add_row(*(Text(cell) for cell in cells))
        out.print(table)
    verdict = journey.verdict()
    style = "green" if verdict.startswith("completed") else "red"
    if verdict.startswith(("pending", "reversed")):
        style = "yellow"
    out.print(Text.assemble("verdict: ", (verdict, f"bold {style}")))


def _record_steps(record: Record) -> list[Step]:
    """A record as its steps: received, then (where it has one) its decision."""
    detail = ", ".join(f"{k} {_plain(v)}" for k, v in record.fields.items() if k != "reason")
    name = record.table.removesuffix("s") if record.table != "gift_requests" else "gift"
    if record.table == "ledger_transactions":
        return [Step(record.created, "wallet", "record", "ledger", record.state, detail)]
    received = record.times.get("created_at") or record.times.get("received_at")
    decided = (
        record.times.get("decided_at")
        or record.times.get("closed_at")
        or record.times.get("updated_at")
    )
    reason = record.fields.get("reason")
    final = f"{record.state}: {reason}" if reason else record.state
    if decided is None or decided == received or record.state in ("pending", "holding"):
        return [Step(received, record.service, "record", name, final, detail)]
    return [
        Step(received, record.service, "record", name, "received", detail),
        Step(decided, record.service, "record", name, final, ""),
    ]


def _json_object(value: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, int | str | bool) or value is None:
        return value
    return str(value)  # Decimal and the like, exactly


def _ms(start: datetime, end: datetime | None) -> str:
    if end is None:
        return ""
    millis = (end - start).total_seconds() * 1000
    return f"{millis / 1000:.2f} s" if abs(millis) >= 1000 else f"{millis:.0f} ms"


def _short(text: str, width: int) -> str:
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return printable if len(printable) <= width else printable[: width - 1] + "…"
