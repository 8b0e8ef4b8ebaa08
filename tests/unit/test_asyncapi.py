"""docs/asyncapi.json and docs/schemas/ agree with the code (`make docs` regenerates them)."""

import ast
import json
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faststream.specification.asyncapi.v3_0_0.schema import ApplicationSchema

from devstack import asyncapi
from services.gifting import handlers as gifting_handlers
from services.payment import handlers as payment_handlers
from services.payout import handlers as payout_handlers
from services.wallet import handlers as wallet_handlers
from shared import contracts, topics
from shared.subscriptions import Subscriptions

ROOT = Path(__file__).resolve().parents[2]
CONSUMED: dict[str, Subscriptions[Any]] = {
    "payment": payment_handlers.consumed,
    "wallet": wallet_handlers.consumed,
    "gifting": gifting_handlers.consumed,
    "payout": payout_handlers.consumed,
}


class StandIn:
    """A service for building routers that never run: every attribute is a use case."""

    def __getattr__(self, name: str) -> "StandIn":
        return self


# Only what `shared.broker.batch_subscription` reads: the routers are never started.
STAND_IN_SETTINGS = SimpleNamespace(
    group_id="docs",
    consumer_max_records=1,
    consumer_batch_timeout_ms=1,
    consumer_fetch_min_bytes=1,
    consumer_fetch_max_wait_ms=0,
    consumer_heartbeat_interval_ms=300,
    consumer_session_timeout_ms=6000,
)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi.asyncapi_document()


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return asyncapi.message_schemas()


def resolve(document: dict[str, Any], reference: dict[str, Any]) -> Any:
    node: Any = document
    for part in reference["$ref"].removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def payload_of(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    """The payload schema of an operation's one message."""
    (message_ref,) = operation["messages"]
    message = resolve(document, resolve(document, message_ref))
    payload: dict[str, Any] = resolve(document, message["payload"])
    return payload


def operations_on(document: dict[str, Any], topic: str) -> dict[str, dict[str, Any]]:
    return {
        name: operation
        for name, operation in document["operations"].items()
        if resolve(document, operation["channel"])["address"] == topic
    }


def test_the_committed_documents_are_what_the_code_generates() -> None:
    problems = asyncapi.check()
    assert not problems, (
        "docs/asyncapi.json or docs/schemas/ no longer match the code; run `make docs` "
        "and commit the result:\n  " + "\n  ".join(problems)
    )


def test_generation_is_deterministic() -> None:
    assert asyncapi.render() == asyncapi.render()


def test_the_committed_document_is_valid_asyncapi_3() -> None:
    data = (ROOT / "docs" / asyncapi.ASYNCAPI_FILE).read_text(encoding="utf-8")
    parsed = ApplicationSchema.model_validate_json(data)
    assert parsed.asyncapi == "3.0.0"


def test_every_topic_has_one_model() -> None:
    models = asyncapi.message_models()
    assert list(models) == [*topics.PUBLIC_TOPICS, *topics.INTERNAL_TOPICS]
    assert all(topic == model.topic for topic, model in models.items())


@pytest.mark.parametrize("topic", [*topics.PUBLIC_TOPICS, *topics.INTERNAL_TOPICS])
def test_every_topic_is_documented_with_its_payload_and_key(
    document: dict[str, Any], topic: str
) -> None:
    model = asyncapi.message_models()[topic]
    operations = operations_on(document, topic)
    assert operations, f"{topic} is not in the AsyncAPI document"
    for name, operation in operations.items():
        payload = payload_of(document, operation)
        assert payload["title"] == model.__name__, name
        assert payload["x-kafka-topic"] == topic, name
        assert payload["x-kafka-key"] == model.key_field, name
        assert set(payload["required"]) <= set(payload["properties"]) == set(model.model_fields)
        description = resolve(document, operation["channel"])["description"]
        assert f"Kafka key: `{model.key_field}`" in description, name
        internal = topic in topics.INTERNAL_TOPICS
        assert description.startswith("INTERNAL: ") is internal, name
        assert ("INTERNAL" in description) is internal, name
        assert payload["x-internal"] is internal, name
        assert payload["description"].startswith("INTERNAL: ") is internal, name


def test_every_subscription_of_every_router_is_documented(document: dict[str, Any]) -> None:
    subscribed: set[tuple[str, str]] = set()
    for service, consumed in CONSUMED.items():
        router = consumed.router(StandIn(), None, STAND_IN_SETTINGS)  # type: ignore[arg-type]
        # One consumer for all the service's topics; Kafka's subscriber class (not the
        # base FastStream types it as) holds them.
        [subscriber] = cast(list[Any], router.subscribers)
        subscribed.update((service, topic.name) for topic in subscriber.topics)
        assert [t.name for t in subscriber.topics] == [t.topic for t in consumed.topics]
    assert len(subscribed) >= 14  # the routers were really read

    documented = set()
    for name, operation in document["operations"].items():
        if operation["action"] == "receive":
            topic, _, consumer = name.partition(":consumed-by-")
            assert resolve(document, operation["channel"])["address"] == topic
            documented.add((consumer, topic))
    assert documented == subscribed


def constructed_events(service: str) -> set[str]:
    """The contract events the service's code constructs, i.e. puts in its outbox."""
    events = {
        name
        for name, obj in vars(contracts).items()
        if isinstance(obj, type) and issubclass(obj, contracts.Event) and "topic" in vars(obj)
    }
    found = set()
    for path in (ROOT / "services" / service).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in events
            ):
                found.add(node.func.id)
    return found


@pytest.mark.parametrize("service", list(CONSUMED))
def test_what_a_service_publishes_is_documented(document: dict[str, Any], service: str) -> None:
    declared = {event.__name__ for event in asyncapi.PUBLISHES[service]}
    assert declared == constructed_events(service), (
        f"devstack.asyncapi.PUBLISHES[{service!r}] differs from the events "
        f"services/{service}/ constructs; update it and run `make docs`"
    )
    for event in asyncapi.PUBLISHES[service]:
        operation = document["operations"][f"{event.topic}:published-by-{service}"]
        assert operation["action"] == "send"
        assert resolve(document, operation["channel"])["address"] == event.topic


def test_each_topic_has_one_publisher() -> None:
    for topic in [*topics.PUBLIC_TOPICS, *topics.INTERNAL_TOPICS]:
        if topic == topics.CHARGEBACK_RECEIVED:
            # Upstream apps, and payment for the signed notices of its webhook.
            assert asyncapi.publishers_of(topic)[0] == asyncapi.UPSTREAM
            assert asyncapi.publishers_of(topic)[1].startswith("payment")
            continue
        assert len(asyncapi.publishers_of(topic)) == 1, topic


def test_the_schema_files_are_json_schemas_of_every_message(
    schemas: dict[str, dict[str, Any]],
) -> None:
    assert set(schemas) == {*topics.PUBLIC_TOPICS, *topics.INTERNAL_TOPICS}
    for topic, schema in schemas.items():
        model = asyncapi.message_models()[topic]
        assert schema["$schema"] == asyncapi.JSON_SCHEMA_DIALECT
        assert schema["x-kafka-topic"] == topic
        assert schema["x-kafka-key"] == model.key_field
        assert schema["x-internal"] is (topic in topics.INTERNAL_TOPICS)
        assert model.key_field in schema["required"]
        if issubclass(model, contracts.Event):
            # The outbox writes every field of an event; consumers may rely on them.
            assert set(schema["required"]) == set(model.model_fields)
            assert {"event_id", "occurred_at", "request_id"} <= set(schema["required"])


def test_a_request_that_parses_matches_its_schema(schemas: dict[str, dict[str, Any]]) -> None:
    # Not a validator, a sanity check: the documented fields are the model's.
    schema = schemas[topics.GIFT_REQUESTED]
    assert schema["properties"]["quantity"]["type"] == "integer"
    assert set(schema["required"]) == {
        "request_id",
        "sender_id",
        "creator_id",
        "gift_id",
        "quantity",
        "occurred_at",
    }


def walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


INTEGER_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def test_diamonds_are_integer_or_string_never_number(
    document: dict[str, Any], schemas: dict[str, dict[str, Any]]
) -> None:
    diamond_fields = [
        (topic, name)
        for topic, model in asyncapi.message_models().items()
        for name, field in model.model_fields.items()
        if field.annotation is Decimal
    ]
    assert (topics.GIFT_SENT, "diamonds") in diamond_fields
    assert (topics.DIAMONDS_CREDITED, "amount") in diamond_fields
    components = document["components"]["schemas"]
    for topic, name in diamond_fields:
        model = asyncapi.message_models()[topic]
        for schema in (schemas[topic], components[model.__name__]):
            assert schema["properties"][name]["anyOf"] == INTEGER_OR_STRING, (topic, name)
    # Whole diamonds (a payout) are integers; nothing anywhere is a float.
    for schema in (document, *schemas.values()):
        for node in walk(schema):
            if isinstance(node, dict):
                assert node.get("type") != "number", node
                for name, prop in node.get("properties", {}).items():
                    if "diamonds" in name:
                        assert prop.get("type") == "integer" or prop["anyOf"] == INTEGER_OR_STRING


def test_check_names_what_differs_and_write_repairs_it(tmp_path: Path) -> None:
    assert asyncapi.check(tmp_path) == [
        f"docs/{name}: missing" for name in sorted(asyncapi.render())
    ]
    assert asyncapi.write(tmp_path)
    assert asyncapi.check(tmp_path) == []
    assert asyncapi.write(tmp_path) == []

    changed = tmp_path / "schemas" / f"{topics.GIFT_SENT}.json"
    changed.write_text(changed.read_text(encoding="utf-8").replace("integer", "number"))
    (tmp_path / "schemas" / "gifting.gone.json").write_text("{}\n")
    assert asyncapi.check(tmp_path) == [
        f"docs/schemas/{topics.GIFT_SENT}.json: differs from what the code generates",
        "docs/schemas/gifting.gone.json: no message has this topic any more",
    ]
    assert asyncapi.write(tmp_path) == [
        "removed docs/schemas/gifting.gone.json",
        f"wrote docs/schemas/{topics.GIFT_SENT}.json",
    ]
    assert asyncapi.check(tmp_path) == []
    json.loads((tmp_path / asyncapi.ASYNCAPI_FILE).read_text(encoding="utf-8"))
