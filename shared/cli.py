"""`coinstream`: the operator's command line (setup, migrations, topics, running a service,
dead letters)."""

import asyncio
import contextlib
import importlib
import json
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shared import acl, auth, contracts, db_roles, dead_letters, kafka_admin, migrations
from shared.dead_letters import DeadLetter, DeadLetterError, Replayed
from shared.journey import trace
from shared.kafka_client import KafkaClientSettings
from shared.reconcile.cli import reconcile
from shared.settings import InfraSettings

app = typer.Typer(no_args_is_help=True, help="Operate a coinstream deployment.")
dlq_app = typer.Typer(
    no_args_is_help=True,
    help="Inspect and replay dead letters (<topic>.dlq). Exit 1 on an error, 2 on misuse.",
)
app.add_typer(dlq_app, name="dlq")
app.command()(reconcile)  # coinstream reconcile (shared/reconcile/)
app.command()(trace)  # coinstream trace REQUEST_ID (shared/journey.py)


@app.command()
def topics() -> None:
    """Create every topic (and its dead-letter topic) that does not exist yet, and set the
    configs coinstream relies on (retention, min.insync.replicas) where they differ."""
    settings = InfraSettings()
    layout = settings.topic_layout()
    report = asyncio.run(kafka_admin.apply_layout(settings.kafka, layout))
    typer.echo(
        f"topics: {len(report.created)} created, {len(report.reconfigured)} reconfigured "
        f"({layout.partitions} partitions, {layout.replication_factor} replica(s), "
        f"min.insync.replicas {layout.min_insync_replicas})"
    )
    for name in report.mismatched:
        _err.print(
            Text(
                f"warning: {name} has fewer partitions or replicas than TOPIC_PARTITIONS="
                f"{layout.partitions} / TOPIC_REPLICATION_FACTOR={layout.replication_factor}; "
                "see docs/operations.md (left as it is)"
            ),
            style="yellow",
        )


@app.command()
def migrate(
    service: Annotated[str, typer.Argument(help="a service name, or 'all'")] = "all",
) -> None:
    """Apply pending schema migrations of one service or of all of them."""
    settings = InfraSettings()
    names = migrations.SERVICES if service == "all" else (service,)
    for name in names:
        if name not in migrations.SERVICES:
            raise typer.BadParameter(f"unknown service {name!r}")
        # As the role that owns the schema (<SERVICE>_DATABASE_URL), else DATABASE_URL.
        url = os.environ.get(f"{name.upper()}_DATABASE_URL") or settings.database_url
        applied = migrations.apply(url, name)
        typer.echo(f"{name}: {len(applied)} migration(s) applied")


GroupPrefix = Annotated[
    str,
    typer.Option(
        envvar="CONSUMER_GROUP_PREFIX",
        help="the services' CONSUMER_GROUP_PREFIX: groups <prefix>-<service>",
    ),
]


@app.command()
def acls(
    group_prefix: GroupPrefix = "coinstream",
    dry_run: Annotated[bool, typer.Option(help="only print the ACLs")] = False,
) -> None:
    """Grant each principal exactly what it needs (shared/acl.py); idempotent, run as a
    super user (the operator). ACLs that exist are left as they are."""
    policy = acl.policy(group_prefix)
    if dry_run:
        for rule in policy:
            typer.echo(rule.describe())
        return
    kafka = InfraSettings().kafka
    try:
        created = asyncio.run(acl.apply(kafka, policy))
    except (acl.AclError, KafkaError) as error:
        _err.print(Text(f"error: {error}"), style="red")
        raise typer.Exit(1) from None
    typer.echo(f"acls: {created} created, {len(policy) - created} already there")


@app.command()
def roles(
    password_dir: Annotated[
        Path,
        typer.Option(
            help="a folder with <role>.password for payment, wallet, gifting, payout and "
            f"{db_roles.READER}",
            exists=True,
            file_okay=False,
        ),
    ],
) -> None:
    """Create or update the PostgreSQL roles (one per service, owning its schema, and the
    read-only one) in the database of DATABASE_URL, which must be an administrator's.
    Idempotent; passwords are read from files and never printed."""
    passwords = {
        role: (password_dir / f"{role}.password").read_text().strip()
        for role in (*db_roles.SERVICES, db_roles.READER)
    }
    asyncio.run(db_roles.provision(InfraSettings().database_url, passwords))
    typer.echo(f"roles: {', '.join(passwords)} provisioned")


@app.command()
def setup(group_prefix: GroupPrefix = "coinstream") -> None:
    """Create the topics, grant the ACLs (on a SASL cluster) for the services' consumer
    groups and apply every service's migrations (idempotent)."""
    topics()
    if InfraSettings().kafka.uses_sasl:
        acls(group_prefix=group_prefix)
    migrate("all")


@app.command()
def publish(
    topic: Annotated[str, typer.Argument(help="e.g. payment.purchase-requested")],
    message: Annotated[str, typer.Argument(help="the JSON message, as an upstream app sends it")],
    key: Annotated[
        str | None, typer.Option(help="the Kafka key; by default the contract's")
    ] = None,
) -> None:
    """Publish one message by hand, keyed as the contract says (user_id, creator_id, ...)."""
    body = json.loads(message)
    model = contracts.REQUESTS.get(topic)
    if key is None:
        if model is None:
            raise typer.BadParameter(f"no contract key known for {topic!r}; pass --key")
        key = str(body[model.key_field])
    kafka = InfraSettings().kafka
    with _operator_errors():  # e.g. a topic this principal may not write: one clear line
        asyncio.run(_publish(kafka, topic, key, message.encode()))
    typer.echo(f"published to {topic} with key {key}")


async def _publish(kafka: KafkaClientSettings, topic: str, key: str, value: bytes) -> None:
    producer = AIOKafkaProducer(**kafka.client_options(), enable_idempotence=True)
    try:
        await producer.start()
        await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="payment, wallet, gifting or payout")],
) -> None:
    """Run one service in the foreground (Kafka consumers, outbox relay, HTTP side)."""
    if service not in migrations.SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}")
    importlib.import_module(f"services.{service}.main").run()


@app.command()
def credentials(
    name: Annotated[str, typer.Argument(help="app, operator, payment, wallet, gifting or payout")],
    instance: Annotated[str, typer.Option(help="the local stack instance")] = "default",
) -> None:
    """Print the local stack's settings for NAME as KEY=value lines for a shell:
    `export $(coinstream credentials app)`. Kafka's password stays in its file
    (KAFKA_SASL_PASSWORD_FILE); a service also gets its DATABASE_URL, the operator the
    read-only one (audit, reconcile) and the key that verifies bearer tokens
    (JWT_PUBLIC_KEY_FILE, for `reconcile --watch --metrics-port`)."""
    import devstack  # the local stack's secrets; production brings its own

    if name not in acl.PRINCIPALS:
        raise typer.BadParameter(f"unknown principal {name!r}; known: {', '.join(acl.PRINCIPALS)}")
    endpoints = devstack.get_instance(instance).local_endpoints
    settings = endpoints.kafka(name).environment()
    if name in acl.SERVICES:
        settings["DATABASE_URL"] = endpoints.database(name)
    elif name == acl.OPERATOR:
        settings["DATABASE_URL"] = endpoints.database(db_roles.READER)
        if endpoints.secrets is not None:
            settings["JWT_PUBLIC_KEY_FILE"] = str(endpoints.secrets.jwt_public_key)
    for key, value in settings.items():
        typer.echo(f"{key}={value}")  # no spaces in any: `export $(...)` takes them


@app.command()
def token(
    subject: Annotated[str, typer.Argument(help="the user or creator id the token reads as")],
    operator: Annotated[
        bool, typer.Option(help="the operator scope: anyone's data, /metrics")
    ] = False,
    ttl: Annotated[str, typer.Option(help="lifetime: seconds, or 30m, 12h, 7d")] = "1h",
) -> None:
    """Print a bearer token for the local stack's HTTP reads:
    `curl -H "Authorization: Bearer $(coinstream token ada)" …`. Signed with the dev key
    at COINSTREAM_JWT_PRIVATE_KEY_FILE (default: .stack/default/secrets/jwt-private.pem);
    JWT_ISSUER and JWT_AUDIENCE, when set, go in the token as the services expect them."""
    import devstack  # the local stack's dev key; production tokens come from its issuer

    try:
        lifetime = auth.parse_duration(ttl)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--ttl") from None
    configured = os.environ.get("COINSTREAM_JWT_PRIVATE_KEY_FILE")
    key = (
        Path(configured) if configured else devstack.get_instance("default").secrets.jwt_private_key
    )
    if not key.is_file():
        typer.echo(f"no token signing key at {key}: run `make up` first", err=True)
        raise typer.Exit(1)
    settings = auth.AuthSettings()
    try:
        typer.echo(
            auth.mint_token(
                key,
                subject,
                operator=operator,
                ttl=lifetime,
                issuer=settings.issuer,
                audience=settings.audience,
            )
        )
    except auth.AuthConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None


# ─── dlq ─────────────────────────────────────────────────────────────────────────────

TopicOption = Annotated[
    str | None,
    typer.Option(help="a topic or its dead-letter topic, e.g. payment.purchase-requested"),
]


@dlq_app.command("list")
def dlq_list(
    topic: TopicOption = None,
    limit: Annotated[int, typer.Option(min=0, help="show the N most recent; 0: all")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """List dead letters (every dead-letter topic, or the one of --topic), oldest first.

    Reads without a consumer group up to the end at the start: it never moves a
    service's offsets. Each row names a dead letter by its coordinates (dead-letter
    topic, partition:offset), which `dlq replay` takes. The summary counts all of them.
    """
    names = [dead_letters.dlq_of(topic)] if topic else dead_letters.known_dlq_topics()
    with _operator_errors():
        letters = dead_letters.by_time(asyncio.run(_read(names, required=topic is not None)))
    shown = letters[-limit:] if limit else letters
    if as_json:
        repeated = dead_letters.repeats(letters)
        for letter in shown:
            typer.echo(dead_letters.json_line(letter, repeat_of=repeated.get(letter.coordinates)))
        if not letters:
            _err.print(f"no dead letters in {_topics_label(names)}")
        return
    _print_letters(letters, shown, names)


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Option(help="the topic or its dead-letter topic")],
    offset: Annotated[
        list[str] | None, typer.Option(help="PARTITION:OFFSET of a dead letter; repeatable")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="every dead letter of it")] = False,
    reason: Annotated[str | None, typer.Option(help="those with this dlq.reason")] = None,
    dry_run: Annotated[bool, typer.Option(help="only print what would be replayed")] = False,
) -> None:
    """Publish dead letters again to their original topic (after the cause is fixed).

    Same key and value; the headers without dlq.* plus dlq.replayed-from. The dead
    letters stay in the dead-letter topic, so a second replay publishes them again:
    the services skip a request_id/event_id they already processed. --all and --reason
    skip repeats (a record dead-lettered twice is replayed once); --offset replays
    exactly what it names.
    """
    if sum((bool(offset), replay_all, reason is not None)) != 1:
        raise typer.BadParameter("give exactly one of --offset, --all, --reason")
    wanted = [_parse_offset(text) for text in offset or []]
    name = dead_letters.dlq_of(topic)
    with _operator_errors():
        letters = asyncio.run(_read([name], required=True))
        skipped: dict[str, str] = {}
        if wanted:
            letters = dead_letters.select_offsets(letters, name, wanted)
        else:
            skipped = dead_letters.repeats(dead_letters.by_time(letters))
            letters = [letter for letter in letters if letter.coordinates not in skipped]
        if reason is not None:
            present = sorted({letter.reason for letter in letters})
            letters = [letter for letter in letters if letter.reason == reason]
            if not letters:
                typer.echo(f"no dead letter with reason {reason!r} in {name}: {present}")
                return
        if not letters:
            typer.echo(f"nothing to replay in {name}")
            return
        replayed = [] if dry_run else asyncio.run(dead_letters.replay(_kafka(), letters))
    _print_replay(letters, replayed, dry_run=dry_run)
    for coordinates, first in skipped.items():
        _out.print(Text(f"skipped {coordinates}: a repeat of {first} (the same record)"))


_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _kafka() -> KafkaClientSettings:
    return InfraSettings().kafka


@contextlib.contextmanager
def _operator_errors() -> Iterator[None]:
    """An error an operator must act on ends the command with its message and exit code 1."""
    try:
        yield
    except (DeadLetterError, KafkaError) as error:
        _err.print(Text(f"error: {error}"), style="red")
        raise typer.Exit(1) from None


async def _read(names: list[str], *, required: bool) -> list[DeadLetter]:
    kafka = _kafka()
    missing = sorted(set(names) - set(await dead_letters.existing_topics(kafka, names)))
    if missing and required:
        raise DeadLetterError(f"topic {missing[0]} does not exist")
    if missing:
        _err.print(Text(f"warning: not created yet: {', '.join(missing)}"), style="yellow")
    return await dead_letters.read(kafka, names)


def _parse_offset(text: str) -> tuple[int, int]:
    try:
        return dead_letters.parse_offset(text)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--offset") from None


def _topics_label(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} dead-letter topics"


def _print_letters(letters: list[DeadLetter], shown: list[DeadLetter], names: list[str]) -> None:
    if not letters:
        _out.print(f"no dead letters in {_topics_label(names)}")
        return
    if len(shown) < len(letters):
        _out.print(f"the {len(shown)} most recent of {len(letters)} (--limit 0 for all)")
    repeated = dead_letters.repeats(letters)
    for dlq_topic in dict.fromkeys(letter.dlq_topic for letter in shown):
        mine = [x for x in shown if x.dlq_topic == dlq_topic]
        _out.print(_letters_table(dlq_topic, mine, repeated))
    _out.print(_summary(letters))
    if repeated:
        _out.print(
            f"{len(repeated)} of them repeat a record dead-lettered before (marked "
            "'repeat of'; dead-lettering is at least once): replay --all/--reason skips them"
        )
    _out.print("replay: coinstream dlq replay --topic DEAD-LETTER-TOPIC --offset P:O [--dry-run]")


def _letters_table(dlq_topic: str, letters: list[DeadLetter], repeated: dict[str, str]) -> Table:
    """One dead-letter topic: the title and P:O are the coordinates `dlq replay` takes."""
    origins = ", ".join(dict.fromkeys(letter.original_topic for letter in letters))
    table = Table(title=f"{dlq_topic}  (from {origins})", title_justify="left")
    for column in ("P:O", "reason", "service", "at (UTC)"):
        table.add_column(column, no_wrap=True)
    for column in ("key", "error", "value"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(*(Text(cell) for cell in _row(letter, repeated.get(letter.coordinates))))
    return table


def _row(letter: DeadLetter, repeat_of: str | None) -> list[str]:
    key = "" if letter.key is None else letter.key.decode(errors="replace")
    reason = letter.reason if repeat_of is None else f"{letter.reason} (repeat of {repeat_of})"
    return [
        f"{letter.partition}:{letter.offset}",
        reason,
        letter.header("dlq.service") or "",
        _when(letter.header("dlq.at")),
        _short(key, 40),
        _short(letter.header("dlq.error") or "", 60),
        _short(letter.value.decode(errors="replace"), 60),
    ]


def _summary(letters: list[DeadLetter]) -> Table:
    table = Table(title=f"{len(letters)} dead letter(s)", title_justify="left")
    table.add_column("from topic")
    table.add_column("reason")
    table.add_column("count", justify="right")
    for topic, reason, count in dead_letters.summarize(letters):
        table.add_row(Text(topic), Text(reason), str(count))
    return table


def _print_replay(letters: list[DeadLetter], replayed: list[Replayed], *, dry_run: bool) -> None:
    verb = "would replay (dry run, nothing published)" if dry_run else "replayed"
    table = Table(title=f"{verb}: {len(letters)} dead letter(s)", title_justify="left")
    for column in ("dead letter", "reason", "to topic", "copy at P:O"):
        table.add_column(column, no_wrap=True)
    table.add_column("key", overflow="fold")
    copies = {copy.letter.coordinates: copy for copy in replayed}
    for letter in letters:
        copy = copies.get(letter.coordinates)
        key = "" if letter.key is None else letter.key.decode(errors="replace")
        at = f"{copy.partition}:{copy.offset}" if copy else "-"
        cells = [letter.coordinates, letter.reason, letter.original_topic, at, _short(key, 24)]
        table.add_row(*(Text(cell) for cell in cells))
    _out.print(table)
    for letter in letters:
        if (source := letter.header(dead_letters.REPLAYED_FROM)) is not None:
            _out.print(
                Text(f"{letter.coordinates} is itself a replay of {source} that failed again")
            )
    conflicts = sum(letter.reason == "idempotency_conflict" for letter in letters)
    if conflicts:
        _out.print(
            Text(
                f"warning: {conflicts} idempotency_conflict: the first request with that "
                "request_id stands, so a copy is dead-lettered again",
                style="yellow",
            )
        )
    _out.print(
        Text(
            "note: the dead letters stay in the dead-letter topic; replaying them again "
            "publishes them again. The services skip a request_id/event_id they already "
            "processed, so a second copy is harmless; a message that still fails is "
            "dead-lettered again."
        )
    )


def _when(text: str | None) -> str:
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str, width: int) -> str:
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return printable if len(printable) <= width else printable[: width - 1] + "…"


if __name__ == "__main__":
    app()
