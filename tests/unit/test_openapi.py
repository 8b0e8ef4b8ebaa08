"""docs/openapi.json agrees with the code (`make docs` regenerates it): every route each
service's app serves is in it, with the security `BearerAuth` really applies, and the
bodies the routes build match its schemas.

The apps are the services' own, built by each `main.create_app` with settings from
defaults (`model_construct`: no environment is read) and a throwaway public key. Building
one connects nowhere (the pool, the broker and the relay start in the lifespan, which
these tests never run), so a request that reaches a service's database fails, and one
that the middleware refuses never gets there.
"""

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devstack import openapi
from services.gifting import api as gifting_api
from services.gifting import main as gifting_main
from services.gifting.domain import Gift
from services.payment import api as payment_api
from services.payment import main as payment_main
from services.payment import webhooks
from services.payment.domain import Offer, Purchase
from services.payment.settings import PaymentSettings
from services.payout import api as payout_api
from services.payout import main as payout_main
from services.payout.domain import Payout
from services.wallet import api as wallet_api
from services.wallet import main as wallet_main
from services.wallet.domain import SpendingLimits
from services.wallet.reads import Balance, HistoryItem
from shared.auth import AuthSettings, Principal, generate_key_pair, mint_token
from shared.http import BearerAuth, OpenRoute, health_routes
from shared.money import Money

CREATE_APP: dict[str, Callable[..., Starlette]] = {
    "payment": payment_main.create_app,
    "wallet": wallet_main.create_app,
    "gifting": gifting_main.create_app,
    "payout": payout_main.create_app,
}
NOW = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
USD = Money(amount_minor=499, currency="USD")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi.openapi_document()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("jwt")
    generate_key_pair(folder / "private.pem", folder / "public.pem")
    return folder / "private.pem", folder / "public.pem"


@pytest.fixture(scope="module")
def apps(keys: tuple[Path, Path]) -> dict[str, Starlette]:
    """Each service's app as its main.py builds it; nothing connects."""
    auth = AuthSettings.model_construct(public_key_file=keys[1])
    return {
        service: CREATE_APP[service](openapi.SERVICES[service].model_construct(auth=auth))
        for service in CREATE_APP
    }


def _path(route: BaseRoute) -> str | None:
    return route.path if isinstance(route, Route) else None


def served(app: Starlette) -> Iterator[tuple[Route, str]]:
    """(route, method) for every method a route of `app` answers; HEAD comes with GET."""
    for route in app.routes:
        assert isinstance(route, Route), route
        methods = set(route.methods or ())
        assert methods, route.path
        if "GET" in methods:
            methods.discard("HEAD")
        for method in sorted(methods):
            yield route, method


def resolve(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        found: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            found = found[part]
        node = found
    return node


def server_of(service: str) -> str:
    return f"http://127.0.0.1:{openapi.SERVICES[service].default_http_port}"


# --- (1) no drift ------------------------------------------------------------------


def test_the_committed_document_is_what_the_code_generates() -> None:
    problems = openapi.check()
    assert not problems, (
        "docs/openapi.json no longer matches the code; run `make docs` and commit the "
        "result:\n  " + "\n  ".join(problems)
    )


def test_generation_is_deterministic() -> None:
    assert openapi.render() == openapi.render()


def test_check_names_what_differs_and_write_repairs_it(tmp_path: Path) -> None:
    assert openapi.check(tmp_path) == ["docs/openapi.json: missing"]
    assert openapi.write(tmp_path) == ["wrote docs/openapi.json"]
    assert openapi.check(tmp_path) == []
    assert openapi.write(tmp_path) == []
    (tmp_path / "openapi.json").write_text("{}\n", encoding="utf-8")
    assert openapi.check(tmp_path) == ["docs/openapi.json: differs from what the code generates"]
    assert openapi.main(["--check"]) == 0


def test_the_document_is_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    assert [server["url"] for server in document["servers"]] == [
        f"http://127.0.0.1:{port}" for port in (8081, 8082, 8083, 8084)
    ]
    assert all(server["description"] for server in document["servers"])
    ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "servers"
    ]
    assert len(ids) == len(set(ids))


# --- (2) every served route is documented ------------------------------------------


def test_the_generator_sees_the_routes_the_apps_serve(apps: dict[str, Starlette]) -> None:
    def shape(routes: Any) -> list[tuple[str, str, frozenset[str]]]:
        return [(type(r).__name__, r.path, frozenset(r.methods)) for r in routes]

    generated = openapi.service_routes()
    assert set(generated) == set(apps)
    for service, app in apps.items():
        assert shape(generated[service]) == shape(app.routes), service


def test_every_route_each_service_serves_is_documented(
    document: dict[str, Any], apps: dict[str, Starlette]
) -> None:
    paths = document["paths"]
    seen: set[tuple[str, str]] = set()
    for service, app in apps.items():
        for route, method in served(app):
            assert route.path in paths, f"{service}: {route.path} is not in docs/openapi.json"
            item = paths[route.path]
            assert method.lower() in item, f"{service}: {method} {route.path} is not documented"
            # The path is on this service's server: its own, or every service's.
            servers = [s["url"] for s in item.get("servers", document["servers"])]
            assert server_of(service) in servers, (service, route.path)
            seen.add((method.lower(), route.path))
            params = item[method.lower()].get("parameters", [])
            in_path = {p["name"] for p in params if p["in"] == "path"}
            assert in_path == set(re.findall(r"{(\w+)", route.path)), route.path
            assert all(p["required"] for p in params if p["in"] == "path")
    assert len(seen) >= 12  # the apps were really read
    documented = {
        (method, path) for path, item in paths.items() for method in item if method != "servers"
    }
    assert documented == seen, "documented but served by no service"
    for path, item in paths.items():
        if "servers" in item:  # a path of one service: only that one serves it
            (server,) = item["servers"]
            owners = [s for s, app in apps.items() if any(_path(r) == path for r in app.routes)]
            assert [server_of(s) for s in owners] == [server["url"]], path


def test_the_contract_routes_are_all_there(document: dict[str, Any]) -> None:
    expected = {
        ("get", "/v1/packages"),
        ("get", "/v1/purchases/{request_id}"),
        ("post", "/v1/webhooks/chargebacks"),
        ("get", "/v1/users/{user_id}/balance"),
        ("get", "/v1/users/{user_id}/transactions"),
        ("get", "/v1/gifts"),
        ("get", "/v1/streams/{stream_id}/leaderboard"),
        ("get", "/v1/payouts/{request_id}"),
        ("get", "/v1/creators/{creator_id}/payouts"),
        ("get", "/health/live"),
        ("get", "/health/ready"),
        ("get", "/metrics"),
    }
    assert {(m, p) for p, item in document["paths"].items() for m in item if m != "servers"} == (
        expected
    )


# --- (3) security as the middleware applies it -------------------------------------


def test_the_bearer_scheme(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"][openapi.BEARER]
    assert {k: scheme[k] for k in ("type", "scheme", "bearerFormat")} == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert document["security"] == [{openapi.BEARER: []}]  # protected unless it says so


def test_security_of_each_operation_is_the_middlewares(
    document: dict[str, Any], apps: dict[str, Starlette]
) -> None:
    for service, app in apps.items():
        (middleware,) = app.user_middleware
        assert cast(object, middleware.cls) is BearerAuth
        guarded = cast(list[BaseRoute], middleware.kwargs["routes"])
        assert list(guarded) == list(app.routes), service  # it knows every route
        for route, method in served(app):
            operation = document["paths"][route.path][method.lower()]
            responses = operation["responses"]
            if isinstance(route, OpenRoute):
                assert operation["security"] == [], (service, route.path)
                assert "401" not in responses, route.path
            else:
                scopes = ["operator"] if route.path == "/metrics" else []
                assert operation["security"] == [{openapi.BEARER: scopes}], route.path
                assert responses["401"] == {"$ref": "#/components/responses/Unauthorized"}
    assert "operator" in document["paths"]["/metrics"]["get"]["description"]


async def test_the_middleware_refuses_what_the_document_protects(
    document: dict[str, Any], apps: dict[str, Starlette], keys: tuple[Path, Path]
) -> None:
    user = mint_token(keys[0], "ada")
    for service, app in apps.items():
        # raise_app_exceptions=False: a route that reaches the (unopened) pool answers 500.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            for route, method in served(app):
                url = re.sub(r"{(\w+)}", "someone", route.path)
                answer = await client.request(method, url)
                if document["paths"][route.path][method.lower()]["security"] == []:
                    assert answer.status_code != 401, (service, method, url)
                else:
                    assert answer.status_code == 401, (service, method, url)
                    assert answer.json()["error"] == "unauthorized"
                    assert answer.headers["www-authenticate"].startswith("Bearer")
            metrics = await client.get("/metrics", headers={"Authorization": f"Bearer {user}"})
            assert metrics.status_code == 403  # a user's token: operator scope needed


def test_the_webhook_documents_its_signature(document: dict[str, Any]) -> None:
    operation = document["paths"][webhooks.PATH]["post"]
    assert operation["security"] == []
    (header,) = [p for p in operation["parameters"] if p["in"] == "header"]
    assert header["name"] == webhooks.SIGNATURE_HEADER == "Signature"
    assert header["required"] is True
    assert "t=" in header["description"] and "v1=" in header["description"]
    body = resolve(document, operation["requestBody"]["content"]["application/json"]["schema"])
    assert set(body["required"]) == {"chargeback_id", "payment_id", "user_id", "occurred_at"}
    assert set(operation["responses"]) == {"200", "400", "409", "413", "422", "503"}
    codes = {
        status: error_codes(document, response)
        for status, response in operation["responses"].items()
        if status != "200"
    }
    assert codes == {
        "400": {
            "missing_signature",
            "malformed_signature",
            "bad_signature",
            "stale_signature",
            "invalid_notice",
        },
        "409": {"idempotency_conflict"},
        "413": {"too_large"},
        "422": {"unknown_payment", "user_mismatch"},
        "503": {"webhook_disabled"},
    }


def error_codes(document: dict[str, Any], response: dict[str, Any]) -> set[str]:
    """The `error` codes an error answer documents; its schema is the Error body."""
    schema = resolve(document, response)["content"]["application/json"]["schema"]
    base, narrowed = schema["allOf"]
    assert base == {"$ref": "#/components/schemas/Error"}
    code = narrowed["properties"]["error"]
    return {code["const"]} if "const" in code else set(code["enum"])


def test_error_answers_have_the_error_body(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "detail"]
    expected = {"400": "bad_request", "401": "unauthorized", "403": "forbidden", "404": "not_found"}
    for path, item in document["paths"].items():
        if path == webhooks.PATH:
            continue  # its own codes (above)
        for method, operation in item.items():
            if method == "servers":
                continue
            for status, code in expected.items():
                if status in operation["responses"]:
                    assert error_codes(document, operation["responses"][status]) == {code}
            assert "200" in operation["responses"], (method, path)


# --- the bodies the routes build match the schemas ---------------------------------


def problems(document: dict[str, Any], schema: Any, value: Any, at: str = "body") -> list[str]:
    """A small JSON Schema check (what the document uses), strict about properties: a
    field the route writes and the schema does not name is a problem too."""
    schema = resolve(document, schema)
    found: list[str] = []
    if "allOf" in schema:
        for part in schema["allOf"]:
            found += problems(document, part, value, at)
    if "anyOf" in schema and all(problems(document, s, value, at) for s in schema["anyOf"]):
        found.append(f"{at}: {value!r} matches none of {schema['anyOf']}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        found.append(f"{at}: {value!r} is not {schema['const']!r}")
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "null": type(None),
    }
    if "type" in schema:
        kind = schema["type"]
        ok = (
            isinstance(value, int) and not isinstance(value, bool)
            if kind == "integer"
            else isinstance(value, kinds[kind])
        )
        if not ok:
            return [*found, f"{at}: {value!r} is not {kind}"]
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        found.append(f"{at}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict) and "properties" in schema:
        properties = schema["properties"]
        extra = set(value) - set(properties)
        # (A part of an allOf that only narrows a field names no `required`.)
        if extra and "required" in schema and "additionalProperties" not in schema:
            found.append(f"{at}: fields the schema does not name: {sorted(extra)}")
        for name in schema.get("required", []):
            if name not in value:
                found.append(f"{at}: {name} is missing")
        for name, sub in properties.items():
            if name in value:
                found += problems(document, sub, value[name], f"{at}.{name}")
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for name, item in value.items():
            found += problems(document, schema["additionalProperties"], item, f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += problems(document, schema["items"], item, f"{at}[{index}]")
    return found


class AsOperator:
    """Stands in for BearerAuth: every request carries an operator's principal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["principal"] = Principal("ops", frozenset({"operator"}))
        await self.app(scope, receive, send)


class StandIns:
    """Every read a route makes of its service, answered with fixed records."""

    async def offers(self, *, currency: str) -> list[Offer]:
        return [Offer("pkg_small", 100, USD)]

    async def purchase(self, *, request_id: str) -> Purchase:
        return Purchase(request_id, "ada", "pkg_small", USD, "pm_card_declined", 100, 0,
                        "failed", "f", reason="payment_declined")  # fmt: skip

    async def balance(self, *, user_id: str) -> Balance:
        limits = SpendingLimits(day=500)
        return Balance(user_id, 350, Decimal("1.5"), Decimal(2), False, limits)

    async def history(
        self, *, user_id: str, before_entry_id: int | None, limit: int
    ) -> tuple[list[HistoryItem], int | None]:
        coins = HistoryItem(9, 4, "purchase", "user_coins", "bonus_issuance", 50, 350, "r-1", NOW)
        # Diamonds are stored in ten-thousandths: 5000 is 0.5 diamonds.
        gift = HistoryItem(8, 3, "gift", "user_diamonds", "diamond_issuance", 5000, 15000,
                           "g-1", NOW)  # fmt: skip
        return [coins, gift], 8

    async def catalog(self) -> list[Gift]:
        return [Gift("rose", "Rose", 1)]

    async def leaderboard(self, *, stream_id: str, limit: int) -> list[tuple[str, int]]:
        return [("ada", 30), ("grace", 10)]

    async def payout(self, *, request_id: str) -> Payout:
        return Payout(request_id, "po_1", "cr_1", 100, "completed", "f", amount=USD,
                      created_at=NOW)  # fmt: skip

    async def payouts_of(self, *, creator_id: str, limit: int) -> list[Payout]:
        pending = Payout("r-2", "po_2", creator_id, 100, "held", "f")
        failed = Payout("r-3", "po_3", creator_id, 10, "failed", "f", reason="below_minimum")
        return [pending, failed]

    async def ping(self) -> bool:
        return True


async def test_the_bodies_the_routes_build_match_the_schemas(document: dict[str, Any]) -> None:
    stand_in: Any = StandIns()
    routes = [
        *payment_api.routes(stand_in),
        *wallet_api.routes(stand_in),
        *gifting_api.routes(stand_in, max_limit=100),
        *payout_api.routes(stand_in),
        *health_routes(CollectorRegistry(), {"database": stand_in.ping}),
    ]
    app = AsOperator(Starlette(routes=routes))
    transport = httpx.ASGITransport(app=app)
    checked = 0
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        for route in routes:
            assert isinstance(route, Route)
            if route.path == "/metrics":
                continue  # Prometheus text, not JSON
            operation = document["paths"][route.path]["get"]
            url = re.sub(r"{(\w+)}", "someone", route.path)
            answer = await client.get(url)
            assert answer.status_code == 200, (url, answer.text)
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert problems(document, schema, answer.json()) == [], url
            checked += 1
            if "400" in operation["responses"]:
                bad = await client.get(url, params={"limit": "0", "currency": "US"})
                assert bad.status_code == 400, url
                schema = resolve(document, operation["responses"]["400"])
                body_schema = schema["content"]["application/json"]["schema"]
                assert problems(document, body_schema, bad.json()) == [], url
    assert checked == 10


async def test_the_webhook_answers_match_the_schemas(document: dict[str, Any]) -> None:
    class Notices:
        async def accept_chargeback_notice(self, notice: Any) -> str:
            return "accepted"

    secret = "whsec_unit"
    settings = PaymentSettings(chargeback_webhook_secret=secret)
    stand_in: Any = Notices()
    app = Starlette(routes=webhooks.routes(stand_in, settings, CollectorRegistry()))
    body = (
        b'{"chargeback_id": "cb_1", "payment_id": "pay_1", "user_id": "u1", '
        b'"occurred_at": "2026-11-22T13:00:00+00:00"}'
    )
    signature = webhooks.signature_header(secret, body, int(datetime.now(UTC).timestamp()))
    responses = document["paths"][webhooks.PATH]["post"]["responses"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc"
    ) as client:
        for headers, status in (({"Signature": signature}, 200), ({}, 400)):
            answer = await client.post(webhooks.PATH, content=body, headers=headers)
            assert answer.status_code == status
            schema = resolve(document, responses[str(status)])["content"]["application/json"]
            assert problems(document, schema["schema"], answer.json()) == []
