"""The Kafka interface as documents, generated from the code: AsyncAPI and JSON Schemas.

`python -m devstack.asyncapi` (`make docs`) writes `docs/asyncapi.json` and one JSON Schema
per topic in `docs/schemas/<topic>.json`; `python -m devstack.asyncapi --check` writes
nothing and exits 1 naming every file that differs from what the code generates.
`tests/unit/test_asyncapi.py` runs the check, so the documents cannot drift.

How the AsyncAPI document is built: a FastStream Kafka broker for documentation only
(never connected) is given

- one subscriber for every topic a service consumes: each service's table of consumed
  topics (`handlers.consumed`, shared/subscriptions.py, from which its one real Kafka
  consumer is built) gives the topic, the declaring function's name and docstring and
  the model; the handler of the copy takes the topic's model, so FastStream knows the
  payload;
- one publisher, with the model as its schema, for every event a service publishes.
  Services publish through their outbox, which FastStream cannot see, so `PUBLISHES`
  says which service publishes what (the unit test checks it against the events each
  service's code constructs).

FastStream's AsyncAPI 3.0 generator turns that broker into the document. Channels and
operations are named `<topic>:consumed-by-<service>` and `<topic>:published-by-<service>`.

Payload schemas are pydantic's, of the message "as it travels" (`wire_model`): a request
as the service accepts it (validation), an event as the service writes it
(serialization, where every field is always present). Each carries `x-kafka-topic`,
`x-kafka-key` and `x-internal`.
"""

import functools
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final, cast

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.security import SASLScram512
from faststream.specification import AsyncAPI
from pydantic import ConfigDict

from devstack import generated_docs
from services.gifting import handlers as gifting_handlers
from services.gifting.settings import GiftingSettings
from services.payment import handlers as payment_handlers
from services.payment.settings import PaymentSettings
from services.payout import handlers as payout_handlers
from services.payout.settings import PayoutSettings
from services.wallet import handlers as wallet_handlers
from services.wallet.settings import WalletSettings
from shared import contracts, topics
from shared.contracts import (
    CoinsClawedBack,
    CoinsCredited,
    CoinsDebited,
    DiamondsCredited,
    DiamondsHoldAnswered,
    DiamondsHoldRequested,
    Event,
    GiftDebitAnswered,
    GiftDebitRequested,
    GiftRejected,
    GiftSent,
    Message,
    PayoutCompleted,
    PayoutFailed,
    PurchaseCompleted,
    PurchaseFailed,
    PurchaseReversed,
    SpendingLimitUpdated,
)
from shared.kafka_client import LOCAL_KAFKA
from shared.settings import ServiceSettings
from shared.subscriptions import Subscriptions

DOCS_DIR: Final = Path(__file__).resolve().parent.parent / "docs"
ASYNCAPI_FILE: Final = "asyncapi.json"
SCHEMAS_DIR: Final = "schemas"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
UPSTREAM: Final = "upstream apps"

_INTERNAL_NOTE: Final = "INTERNAL: not part of CONTRACT.md; its shape may change with the services."

SERVICES: Final[dict[str, tuple[Subscriptions[Any], type[ServiceSettings]]]] = {
    "payment": (payment_handlers.consumed, PaymentSettings),
    "wallet": (wallet_handlers.consumed, WalletSettings),
    "gifting": (gifting_handlers.consumed, GiftingSettings),
    "payout": (payout_handlers.consumed, PayoutSettings),
}
"""Each service's consumed topics and its settings class."""

PUBLISHES: Final[dict[str, dict[type[Event], str]]] = {
    "payment": {
        PurchaseCompleted: "A purchase was charged: the wallet credits its coins and bonus "
        "coins. Outcome of payment.purchase-requested.",
        PurchaseFailed: "A purchase request was refused or its charge failed; `reason` says "
        "why. Outcome of payment.purchase-requested.",
        PurchaseReversed: "A completed purchase was reversed after a chargeback; the wallet "
        "claws its coins back. Outcome of payment.chargeback-received.",
    },
    "wallet": {
        CoinsCredited: "Coins were added to a user's balance (a purchase), with the balance after.",
        CoinsDebited: "Coins left a sender's balance to pay for a gift, with the balance after.",
        DiamondsCredited: "A creator received diamonds for a gift, with the balance after.",
        CoinsClawedBack: "The coins of a reversed purchase were taken back, even below zero, "
        "which freezes the account.",
        SpendingLimitUpdated: "A user's own spending limit was set, or removed (`max_coins` "
        "null). Outcome of wallet.spending-limit-requested.",
        GiftDebitAnswered: "The wallet's one answer to gifting.gift-debit-requested: debited, "
        "or refused with a reason (the gift saga).",
        DiamondsHoldAnswered: "The wallet's one answer to payout.diamonds-hold-requested: "
        "held, or refused.",
    },
    "gifting": {
        GiftSent: "A gift was paid for: coins spent by the sender, diamonds earned by the "
        "creator. Outcome of gifting.gift-requested.",
        GiftRejected: "A gift request was refused; `reason` says why. Outcome of "
        "gifting.gift-requested.",
        GiftDebitRequested: "Gifting asks the wallet to pay for a valid gift request (the "
        "gift saga).",
    },
    "payout": {
        PayoutCompleted: "A creator was paid for whole diamonds. Outcome of "
        "payout.payout-requested.",
        PayoutFailed: "A payout request was refused or the payment failed; `reason` says "
        "why. Outcome of payout.payout-requested.",
        DiamondsHoldRequested: "Payout asks the wallet to reserve a creator's diamonds before "
        "paying them out.",
    },
}
"""What each service publishes through its outbox, with a line on what the event means."""


@dataclass(frozen=True)
class Subscription:
    """One topic a service's router subscribes to, and the handler's name and docstring."""

    service: str
    topic: str
    handler: str
    doc: str
    group_id: str


def message_models() -> dict[str, type[Message]]:
    """Every message model of `shared.contracts`, by topic (public ones first)."""
    found: dict[str, type[Message]] = {}
    for obj in vars(contracts).values():
        if isinstance(obj, type) and issubclass(obj, Message) and "topic" in vars(obj):
            if obj.topic in found:
                raise ValueError(f"two models for {obj.topic}: {found[obj.topic]}, {obj}")
            found[obj.topic] = obj
    order = [*topics.PUBLIC_TOPICS, *topics.INTERNAL_TOPICS]
    unknown = set(found) - set(order)
    if unknown:
        raise ValueError(f"models of topics shared.topics does not list: {sorted(unknown)}")
    return {topic: found[topic] for topic in order if topic in found}


def subscriptions() -> list[Subscription]:
    """What each service consumes, read from the tables its consumer is built from.

    Settings are built from defaults (`model_construct`: no environment is read) for
    the group id only, so nothing connects anywhere.
    """
    found = [
        Subscription(
            service=service,
            topic=declared.topic,
            handler=declared.name,
            doc=_reflow(declared.doc),
            group_id=settings_class.model_construct().group_id,
        )
        for service, (consumed, settings_class) in SERVICES.items()
        for declared in consumed.topics
    ]
    return sorted(found, key=lambda s: (s.topic, s.service, s.handler))


def _reflow(docstring: str) -> str:
    """A docstring as Markdown paragraphs: the lines of each paragraph joined."""
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def publishers_of(topic: str) -> list[str]:
    """The services that publish `topic`, or `UPSTREAM` for a request of CONTRACT.md."""
    if topic == topics.CHARGEBACK_RECEIVED:
        return [UPSTREAM, "payment (signed notices of POST /v1/webhooks/chargebacks)"]
    if topic in contracts.REQUESTS:
        return [UPSTREAM]
    return [
        service for service, events in PUBLISHES.items() if any(e.topic == topic for e in events)
    ]


def _key_note(model: type[Message]) -> str:
    return f"Kafka key: `{model.key_field}` (UTF-8). Value: one JSON object, UTF-8."


def _visibility(topic: str) -> str:
    """The first paragraph of a channel's description."""
    if topic in topics.INTERNAL_TOPICS:
        return _INTERNAL_NOTE
    return "Public: part of CONTRACT.md."


@functools.cache
def wire_model(model: type[Message]) -> type[Message]:
    """`model` as it travels, for its JSON Schema.

    A request is described as the service accepts it (validation); an event as the
    service writes it (serialization, every field required: the outbox writes them all,
    optional ones as null). The schema names the topic, the Kafka key and whether the
    topic is internal.
    """
    internal = model.topic in topics.INTERNAL_TOPICS
    own_doc = _reflow(vars(model).get("__doc__") or "")
    description = " ".join(
        part
        for part in (
            _INTERNAL_NOTE if internal else "",
            f"The value of a `{model.topic}` message. {_key_note(model)}",
            own_doc,
        )
        if part
    )
    config = ConfigDict(
        json_schema_extra={
            "x-kafka-topic": model.topic,
            "x-kafka-key": model.key_field,
            "x-internal": internal,
        }
    )
    if issubclass(model, Event):
        config["json_schema_mode_override"] = "serialization"
        config["json_schema_serialization_defaults_required"] = True
    namespace = {
        "__module__": model.__module__,
        "__qualname__": model.__qualname__,
        "__doc__": description,
        "model_config": config,
    }
    return cast(type[Message], type(model.__name__, (model,), namespace))


def _documentation_handler(name: str, model: type[Message]) -> Callable[..., Any]:
    """A handler that is never called: its one parameter tells FastStream the payload."""

    async def handler(message: Any) -> None:  # pragma: no cover - never called
        raise NotImplementedError

    handler.__name__ = handler.__qualname__ = name
    handler.__annotations__ = {"message": model, "return": None}
    setattr(  # noqa: B010 - mypy does not know functions carry a signature
        handler,
        "__signature__",
        inspect.Signature(
            [
                inspect.Parameter(
                    "message", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=model
                )
            ],
            return_annotation=None,
        ),
    )
    return handler


def build_broker() -> KafkaBroker:
    """The documentation-only broker: every service's subscribers and publishers."""
    models = message_models()
    broker = KafkaBroker(
        LOCAL_KAFKA,
        description="The local stack (`make up`); elsewhere the servers named by "
        "KAFKA_BOOTSTRAP_SERVERS. Every client authenticates (SASL SCRAM-SHA-512 over TLS "
        "on the local stack; any KAFKA_SECURITY_PROTOCOL elsewhere) as its own principal: "
        "`app` (upstream apps: writes the request topics, reads outcomes and wallet events "
        "in consumer groups named `app-…`), `payment`, `wallet`, `gifting`, `payout` "
        "(each writes only its own topics and the `.dlq` of what it consumes), `operator` "
        "(set-up, dead-letter replay). ACLs refuse everything else.",
        # Documentation only: never connects, so no credentials.
        security=SASLScram512(username="", password="", use_ssl=True),
    )
    subs = subscriptions()
    consumers: dict[str, list[str]] = {}
    for sub in subs:
        consumers.setdefault(sub.topic, []).append(sub.service)

    for sub in subs:
        model = models[sub.topic]
        description = "\n\n".join(
            (
                _visibility(sub.topic),
                f"{sub.service} consumes `{sub.topic}` (handler `{sub.handler}` in "
                f"services/{sub.service}/handlers.py, consumer group `{sub.group_id}`). "
                f"Published by {', '.join(publishers_of(sub.topic))}.",
                sub.doc,
                f"{_key_note(model)} A message that is not JSON, misses a required field or "
                f"has a wrong type goes to `{topics.dlq(sub.topic)}` unchanged.",
            )
        )
        subscriber = broker.subscriber(
            sub.topic,
            title=f"{sub.topic}:consumed-by-{sub.service}",
            description=description,
        )
        subscriber(_documentation_handler(sub.handler, wire_model(model)))

    for service, events in PUBLISHES.items():
        for event, summary in events.items():
            readers = consumers.get(event.topic, [])
            consumed = (
                f"Consumed by {', '.join(readers)}."
                if readers
                else "Not consumed inside coinstream: for upstream apps."
            )
            description = "\n\n".join(
                (
                    _visibility(event.topic),
                    f"{service} publishes `{event.topic}` through its transactional outbox. "
                    f"{consumed}",
                    summary,
                    f"{_key_note(event)} Carries `event_id` (unique), `occurred_at` and the "
                    "`request_id` that caused it. Record headers: `content-type: "
                    "application/json` and `event_id`; W3C `traceparent` (and "
                    "`tracestate`) when the service traces (docs/operations.md#traces).",
                )
            )
            broker.publisher(
                event.topic,
                title=f"{event.topic}:published-by-{service}",
                description=description,
                schema=wire_model(event),
            )
    return broker


def build_app() -> FastStream:
    """A FastStream application describing the whole system, for documentation only.

    `faststream docs gen --factory devstack.asyncapi:build_app` works on it too.
    """
    return FastStream(
        build_broker(),
        specification=AsyncAPI(
            title="coinstream",
            version=metadata.version("coinstream"),
            description=(
                "The Kafka interface of coinstream's four services (payment, wallet, "
                "gifting, payout), generated from the code by `make docs` "
                "(`python -m devstack.asyncapi`); do not edit by hand.\n\n"
                "Every message is one JSON object, UTF-8, keyed by the id its description "
                "names (as a UTF-8 string), so one account's messages stay in order. "
                "Unknown fields are ignored; a message that is not JSON, misses a required "
                "field or has a wrong type goes to `<topic>.dlq`. `request_id` is the "
                "idempotency key of a request. Diamonds are an integer, or a decimal "
                "string when there is a fraction; never a float.\n\n"
                "Requests are published by upstream apps; services publish events through "
                "a transactional outbox. Channels and schemas whose description starts with "
                "INTERNAL are between services and not part of the public contract (CONTRACT.md). "
                "JSON Schemas of every message: docs/schemas/<topic>.json."
            ),
            schema_version="3.0.0",
        ),
    )


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as JSON-ready data.

    One change to FastStream's output: it gives every message a `correlationId` in a
    `correlation_id` header, its own convention; coinstream's records carry none (the
    relay sets `content-type` and `event_id`), so it is removed.
    """
    document: dict[str, Any] = build_app().schema.to_specification().to_jsonable()
    for message in document.get("components", {}).get("messages", {}).values():
        message.pop("correlationId", None)
    return document


def message_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every message, by topic: public and internal (`x-internal`)."""
    return {
        topic: {"$schema": JSON_SCHEMA_DIALECT, **wire_model(model).model_json_schema()}
        for topic, model in message_models().items()
    }


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """Every generated file's text, by its path under docs/ (POSIX)."""
    files = {ASYNCAPI_FILE: _dump(asyncapi_document())}
    for topic, schema in message_schemas().items():
        files[f"{SCHEMAS_DIR}/{topic}.json"] = _dump(schema)
    return files


def _committed(docs_dir: Path) -> dict[str, str]:
    files = {}
    asyncapi = docs_dir / ASYNCAPI_FILE
    if asyncapi.exists():
        files[ASYNCAPI_FILE] = asyncapi.read_text(encoding="utf-8")
    for path in sorted((docs_dir / SCHEMAS_DIR).glob("*.json")):
        files[f"{SCHEMAS_DIR}/{path.name}"] = path.read_text(encoding="utf-8")
    return files


def check(docs_dir: Path = DOCS_DIR) -> list[str]:
    """What differs between the files under `docs_dir` and what the code generates."""
    wanted, present = render(), _committed(docs_dir)
    problems = []
    for name in sorted(wanted.keys() | present.keys()):
        if name not in present:
            problems.append(f"docs/{name}: missing")
        elif name not in wanted:
            problems.append(f"docs/{name}: no message has this topic any more")
        elif present[name] != wanted[name]:
            problems.append(f"docs/{name}: differs from what the code generates")
    return problems


def write(docs_dir: Path = DOCS_DIR) -> list[str]:
    """Regenerate the files under `docs_dir`; return the ones written or removed."""
    wanted, present = render(), _committed(docs_dir)
    changed = []
    for name in sorted(present.keys() - wanted.keys()):
        (docs_dir / name).unlink()
        changed.append(f"removed docs/{name}")
    for name, text in wanted.items():
        if present.get(name) != text:
            path = docs_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(f"wrote docs/{name}")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    return generated_docs.command(
        argv,
        prog="python -m devstack.asyncapi",
        what="docs/asyncapi.json and docs/schemas/",
        check=check,
        write=write,
    )


if __name__ == "__main__":
    sys.exit(main())
