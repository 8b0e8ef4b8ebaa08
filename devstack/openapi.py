"""The HTTP interface as an OpenAPI 3.1 document, generated from the code.

`python -m devstack.openapi` (`make docs`) writes `docs/openapi.json`;
`python -m devstack.openapi --check` writes nothing and exits 1 naming the file when it
differs from what the code generates. `tests/unit/test_openapi.py` runs the check, so
the document cannot drift.

How the document is built:

- the routes are the services' own: each service's route builders (`api.routes`, and
  payment's `webhooks.routes`) are called with stand-ins for the service (a handler
  only touches it when a request arrives) and settings built from defaults
  (`model_construct`: no environment is read), and `shared.http.health_routes` is
  added as `ServiceKit.http_app` does. Nothing connects anywhere. (The unit test
  compares these with the routes of the apps each service's `create_app` builds.)
- each (method, path) a service serves must have an entry in `OPERATIONS` (what it
  answers, its query parameters), and every entry must be served: generation fails
  otherwise, so a new route cannot go undocumented;
- the security of an operation comes from the route itself, as `BearerAuth` decides:
  an `OpenRoute` has `security: []`, any other route needs the bearer token (and
  answers 401, or 503 when the token keys cannot be fetched, before it runs);
  `/metrics` also needs the operator scope;
- path parameters come from the route's path; servers from each service's settings
  (its default HTTP port on the local stack). A path only one service serves names
  that service's server; `/health/*` and `/metrics` are on all four.

The response bodies are JSON Schemas written here (`SCHEMAS`, the one place), after
what the routes build (CONTRACT.md, HTTP); the unit test runs every route with stand-in
services and checks its body against them.
"""

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final, cast, get_args

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.routing import BaseRoute, Route

from devstack import generated_docs
from services.gifting import api as gifting_api
from services.gifting.settings import GiftingSettings
from services.payment import api as payment_api
from services.payment import webhooks
from services.payment.domain import Status as PurchaseStatus
from services.payment.settings import PaymentSettings
from services.payout import api as payout_api
from services.payout.settings import PayoutSettings
from services.wallet import api as wallet_api
from services.wallet.domain import AccountKind, TxKind, coin_source
from services.wallet.settings import WalletSettings
from shared.auth import OPERATOR_SCOPE
from shared.contracts import (
    ChargebackReceived,
    PayoutFailureReason,
    PurchaseFailureReason,
)
from shared.http import REALM, OpenRoute, health_routes
from shared.money import Money
from shared.settings import ServiceSettings

DOCS_DIR: Final = Path(__file__).resolve().parent.parent / "docs"
OPENAPI_FILE: Final = "openapi.json"
OPENAPI_VERSION: Final = "3.1.0"
BEARER: Final = "bearerAuth"
HEALTH_TAG: Final = "health and metrics"

SERVICES: Final[dict[str, type[ServiceSettings]]] = {
    "payment": PaymentSettings,
    "wallet": WalletSettings,
    "gifting": GiftingSettings,
    "payout": PayoutSettings,
}
"""Each service and its settings class (its name and default HTTP port)."""

_SERVICE_ROLES: Final = {
    "payment": "the coin package catalog, purchases, the card provider's chargeback webhook",
    "wallet": "balances, spending limits and the transaction history of users and creators",
    "gifting": "the gift catalog and the leaderboards of streams",
    "payout": "creators' payouts",
}


_STAND_IN: Final[Any] = None
"""The service given to a route builder: only a handler uses it, per request."""


def service_routes() -> dict[str, list[BaseRoute]]:
    """The routes each service serves, built as its `create_app` and `ServiceKit.http_app`
    build them, with stand-ins: nothing is connected, no environment is read."""
    payment = PaymentSettings.model_construct()
    gifting = GiftingSettings.model_construct()
    own: dict[str, Sequence[BaseRoute]] = {
        "payment": [
            *payment_api.routes(_STAND_IN),
            *webhooks.routes(_STAND_IN, payment, CollectorRegistry()),
        ],
        "wallet": wallet_api.routes(_STAND_IN),
        "gifting": gifting_api.routes(_STAND_IN, max_limit=gifting.leaderboard_max_limit),
        "payout": payout_api.routes(_STAND_IN),
    }
    return {
        service: [*routes, *health_routes(CollectorRegistry(), {})]
        for service, routes in own.items()
    }


def served_methods(route: BaseRoute) -> list[str]:
    """The methods a route answers, as documented: Starlette adds HEAD to every GET,
    which the document leaves implicit."""
    methods = set(cast(Route, route).methods or ())
    if "GET" in methods:
        methods.discard("HEAD")
    return sorted(methods)


# --- schemas -----------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(description: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object whose every property is always present (null where it says so)."""
    return {
        "type": "object",
        "description": description,
        "properties": dict(properties),
        "required": list(properties),
    }


def _nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"anyOf": [dict(schema), {"type": "null"}]}


_INTEGER: Final = {"type": "integer"}
_STRING: Final = {"type": "string"}
_TIMESTAMP: Final = {"type": "string", "format": "date-time"}
_ID: Final = {"type": "string", "minLength": 1, "maxLength": 64}
_DIAMONDS: Final = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "description": 'Diamonds: an integer when whole, else a decimal string (`"0.5"`); '
    "never a float.",
}
_WHOLE_DIAMONDS: Final = {"type": "integer", "minimum": 1}
_USER_ACCOUNTS: Final = sorted(kind.value for kind in AccountKind if kind.user_owned)
_COIN_SOURCES: Final = sorted(
    source for source in {coin_source(kind) for kind in AccountKind} if source is not None
)


def _money_schema() -> dict[str, Any]:
    schema = Money.model_json_schema(mode="serialization")
    schema.pop("title", None)
    return schema


def _chargeback_notice_schema() -> dict[str, Any]:
    schema = ChargebackReceived.model_json_schema()
    schema.pop("title", None)
    schema["description"] = (
        "A chargeback notice of the card provider: the fields of `payment.chargeback-received` "
        "(all required; unknown fields are ignored). At most "
        f"{webhooks.MAX_BODY_BYTES} bytes."
    )
    return schema


def schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas of the bodies, by component name (the one place they are written)."""
    return {
        "Error": _object(
            "Every error answer: a code and a human-readable detail.",
            {
                "error": {**_STRING, "description": "A stable code, such as `not_found`."},
                "detail": {**_STRING, "description": "What went wrong, for a human."},
            },
        ),
        "Money": _money_schema(),
        "Package": _object(
            "A coin package as the catalog sells it in one currency.",
            {
                "package_id": _ID,
                "coins": _INTEGER,
                "bonus_coins": {
                    **_INTEGER,
                    "description": "The bonus of the promotion running now, else 0.",
                },
                "price": _ref("Money"),
            },
        ),
        "PackageList": _object(
            "The catalog in one currency.",
            {"packages": {"type": "array", "items": _ref("Package")}},
        ),
        "Purchase": _object(
            "A purchase request and what became of it.",
            {
                "request_id": _ID,
                "user_id": _ID,
                "status": {"enum": list(get_args(PurchaseStatus))},
                "reason": {
                    "enum": [*get_args(PurchaseFailureReason), None],
                    "description": "Why it failed (the reason codes of "
                    "payment.purchase-failed); null unless failed.",
                },
                "payment_id": _nullable(
                    {**_STRING, "description": "Set once the provider was asked to charge."}
                ),
            },
        ),
        "ChargebackNotice": _chargeback_notice_schema(),
        "ChargebackAnswer": _object(
            "The answer to a notice that was recorded now, or before.",
            {
                "status": {
                    "enum": ["accepted", "duplicate"],
                    "description": "`accepted`: recorded; payment.chargeback-received "
                    "published, then payment.purchase-reversed. `duplicate`: this "
                    "chargeback_id was accepted before; no second effect.",
                },
                "chargeback_id": _ID,
            },
        ),
        "Balance": _object(
            "A user's (or creator's) balances; an unknown user has zero balances.",
            {
                "user_id": _ID,
                "coins": {**_INTEGER, "description": "Below zero only after a clawback."},
                "diamonds": {**_DIAMONDS, "description": "Available diamonds."},
                "diamonds_on_hold": {
                    **_DIAMONDS,
                    "description": "Diamonds reserved by payouts in flight.",
                },
                "frozen": {
                    "type": "boolean",
                    "description": "Frozen after a clawback took coins below zero: no gifts.",
                },
                "spending_limits": _ref("SpendingLimits"),
            },
        ),
        "SpendingLimits": _object(
            "The user's own coin limits per period; null: no limit.",
            {
                period: _nullable({"type": "integer", "minimum": 0})
                for period in ("day", "week", "month")
            },
        ),
        "Transaction": _object(
            "One movement on one of the user's accounts.",
            {
                "entry_id": _INTEGER,
                "transaction_id": _INTEGER,
                "kind": {"enum": [kind.value for kind in TxKind]},
                "account": {"enum": _USER_ACCOUNTS},
                "counter_account": {
                    "enum": [*(kind.value for kind in AccountKind), None],
                    "description": "The other side of the movement.",
                },
                "coin_source": {
                    "enum": [*_COIN_SOURCES, None],
                    "description": "Whether coins were purchased or bonus coins; null for "
                    "anything else.",
                },
                "amount": {
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "description": "Signed. Coins as integers; diamonds as the contract "
                    'writes them (`1`, `"0.5"`).',
                },
                "balance_after": {
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "description": "The account's balance after this movement, in the same unit.",
                },
                "request_id": _STRING,
                "created_at": _TIMESTAMP,
            },
        ),
        "TransactionPage": _object(
            "A page of the history, newest first.",
            {
                "items": {"type": "array", "items": _ref("Transaction")},
                "next_cursor": _nullable(
                    {**_STRING, "description": "Pass as `cursor` for the next page."}
                ),
            },
        ),
        "Gift": _object(
            "A gift of the catalog.", {"gift_id": _ID, "name": _STRING, "coins": _INTEGER}
        ),
        "GiftList": _object(
            "The active gifts.", {"gifts": {"type": "array", "items": _ref("Gift")}}
        ),
        "Leaderboard": _object(
            "A stream's top gifters, most coins first.",
            {
                "stream_id": _ID,
                "entries": {
                    "type": "array",
                    "items": _object("A gifter.", {"sender_id": _ID, "coins": _INTEGER}),
                },
            },
        ),
        "Payout": _object(
            "A payout request and what became of it.",
            {
                "request_id": _ID,
                "creator_id": _ID,
                "status": {
                    "enum": ["pending", "completed", "failed"],
                    "description": "`pending` while the diamonds are held or the bank's "
                    "answer is reconciled.",
                },
                "reason": {
                    "enum": [*get_args(PayoutFailureReason), None],
                    "description": "Why it failed (the reason codes of "
                    "payout.payout-failed); null unless failed.",
                },
                "payout_id": _nullable(_STRING),
                "diamonds": _WHOLE_DIAMONDS,
                "amount": _nullable(_ref("Money")),
                "created_at": _nullable(_TIMESTAMP),
            },
        ),
        "PayoutList": _object(
            "A creator's payouts, newest first.",
            {"items": {"type": "array", "items": _ref("Payout")}},
        ),
        "Liveness": _object("The process answers.", {"status": {"const": "alive"}}),
        "Readiness": _object(
            "Whether the service can do its work.",
            {
                "status": {"enum": ["ready", "not_ready"]},
                "checks": {
                    "type": "object",
                    "description": "Each check (`database`, `kafka`, `relay`) and whether "
                    "it passed.",
                    "additionalProperties": {"type": "boolean"},
                },
            },
        ),
    }


# --- responses ---------------------------------------------------------------------


def _json(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": dict(schema)}}}


def _error(description: str, *codes: str) -> dict[str, Any]:
    code = {"const": codes[0]} if len(codes) == 1 else {"enum": list(codes)}
    schema = {"allOf": [_ref("Error"), {"properties": {"error": code}}]}
    return _json(description, schema)


def _response(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


RESPONSES: Final[dict[str, dict[str, Any]]] = {
    "BadRequest": _error("A query parameter is out of range or malformed.", "bad_request"),
    "Unauthorized": {
        **_error(
            "No bearer token, another scheme, or a malformed, badly signed or expired "
            "token; answered before the route runs.",
            "unauthorized",
        ),
        "headers": {
            "WWW-Authenticate": {
                "description": f'`{REALM}`, plus `error="invalid_token"` when a token was sent.',
                "schema": _STRING,
            }
        },
    },
    "Forbidden": _error("The token may not read this: another user's data.", "forbidden"),
    "NotFound": _error(
        "Unknown, or another user's (answered exactly alike, so its existence is not told).",
        "not_found",
    ),
    "AuthUnavailable": _error(
        "The keys to verify tokens cannot be fetched (JWT_JWKS_URL unreachable).",
        "auth_unavailable",
    ),
}
"""Answers many operations share, by component name."""


# --- operations --------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """What the code of one (method, path) does, for the document."""

    operation_id: str
    summary: str
    description: str
    responses: Mapping[str, Any]
    tag: str = ""  # the service's, unless on every service
    query: Sequence[Mapping[str, Any]] = ()
    headers: Sequence[Mapping[str, Any]] = ()
    request_body: Mapping[str, Any] | None = None
    operator_only: bool = False  # needs the operator scope (else 403)
    extra: Mapping[str, Any] = field(default_factory=dict)


def _limit(default: int, maximum: int, what: str) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"How many {what}, from 1 to {maximum}; 400 outside.",
        "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
    }


PATH_PARAMETERS: Final = {
    "request_id": "The `request_id` of the request (its idempotency key).",
    "user_id": "A user's (or creator's) id; the token's `sub`, unless it is an operator's.",
    "stream_id": "A live stream's id.",
    "creator_id": "A creator's id; the token's `sub`, unless it is an operator's.",
}

_OWN_OR_OPERATOR: Final = (
    "Token: its `sub` must be the `{owner}` of the path, or the token has the operator "
    "scope; anyone else 403."
)
_RECORD_OF: Final = (
    "Token: the {kind}'s `{owner}`, or the operator scope; for anyone else it is 404 "
    "exactly like an unknown request id."
)

_GIFTING_DEFAULTS: Final = GiftingSettings.model_construct()

OPERATIONS: Final[dict[tuple[str, str], Operation]] = {
    ("GET", "/v1/packages"): Operation(
        operation_id="listPackages",
        tag="payment",
        summary="The coin package catalog in one currency",
        description="Open: no token (the catalog is the same for everyone). `bonus_coins` is "
        "the bonus of the promotion running now, else 0.",
        query=[
            {
                "name": "currency",
                "in": "query",
                "required": False,
                "description": "An ISO 4217 code (case-insensitive); 400 when not three letters.",
                "schema": {"type": "string", "pattern": "^[A-Za-z]{3}$", "default": "USD"},
            }
        ],
        responses={
            "200": _json("The packages on sale in that currency.", _ref("PackageList")),
            "400": _response("BadRequest"),
        },
    ),
    ("GET", "/v1/purchases/{request_id}"): Operation(
        operation_id="getPurchase",
        tag="payment",
        summary="A purchase request and its outcome",
        description=_RECORD_OF.format(kind="purchase", owner="user_id"),
        responses={
            "200": _json("The purchase.", _ref("Purchase")),
            "404": _response("NotFound"),
        },
    ),
    ("POST", webhooks.PATH): Operation(
        operation_id="receiveChargebackNotice",
        tag="payment",
        summary="The card provider's signed chargeback notices",
        description="Open: no bearer token; the HMAC signature authenticates the provider. "
        "`Signature: t=<unix seconds>,v1=<hex>`: v1 is hex HMAC-SHA256(secret, "
        '`"<t>.<raw body>"`); one or more v1 (any one may match); `t` within '
        f"{webhooks.TOLERANCE_S} s of the server's clock. An accepted notice is published "
        "as payment.chargeback-received, then payment.purchase-reversed. Operations: "
        "docs/operations.md, Chargeback webhook.",
        headers=[
            {
                "name": webhooks.SIGNATURE_HEADER,
                "in": "header",
                "required": True,
                "description": "`t=<unix seconds>,v1=<64 hex digits>[,v1=…]`: HMAC-SHA256 of "
                '`"<t>.<raw body>"` with the shared secret; missing: 400 missing_signature.',
                "schema": {
                    "type": "string",
                    "examples": ["t=1790000000,v1=" + "0" * 64],
                },
            }
        ],
        request_body={
            "required": True,
            "content": {"application/json": {"schema": _ref("ChargebackNotice")}},
        },
        responses={
            "200": _json(
                "Recorded now (`accepted`) or before (`duplicate`).", _ref("ChargebackAnswer")
            ),
            "400": _error(
                "Refused, nothing recorded: no, a malformed, a wrong or a stale signature, or "
                "a body that is not a valid notice.",
                "missing_signature",
                "malformed_signature",
                "bad_signature",
                "stale_signature",
                "invalid_notice",
            ),
            "409": _error(
                "The chargeback_id was accepted before for another payment or user.",
                "idempotency_conflict",
            ),
            "413": _error(f"The body is over {webhooks.MAX_BODY_BYTES} bytes.", "too_large"),
            "422": _error(
                "No completed payment with that payment_id, or it is another user's; "
                "nothing recorded.",
                "unknown_payment",
                "user_mismatch",
            ),
            "503": _error(
                "No webhook secret is configured on this deployment.", "webhook_disabled"
            ),
        },
    ),
    ("GET", "/v1/users/{user_id}/balance"): Operation(
        operation_id="getBalance",
        tag="wallet",
        summary="A user's balances and spending limits",
        description=_OWN_OR_OPERATOR.format(owner="user_id")
        + " An unknown user has zero balances.",
        responses={"200": _json("The balances.", _ref("Balance")), "403": _response("Forbidden")},
    ),
    ("GET", "/v1/users/{user_id}/transactions"): Operation(
        operation_id="listTransactions",
        tag="wallet",
        summary="A user's transaction history, newest first",
        description=_OWN_OR_OPERATOR.format(owner="user_id"),
        query=[
            _limit(50, wallet_api.MAX_PAGE, "movements"),
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "description": "The `next_cursor` of the previous page (an integer); 400 "
                "when not one.",
                "schema": {"type": "string", "pattern": "^-?[0-9]+$"},
            },
        ],
        responses={
            "200": _json("A page of the history.", _ref("TransactionPage")),
            "400": _response("BadRequest"),
            "403": _response("Forbidden"),
        },
    ),
    ("GET", "/v1/gifts"): Operation(
        operation_id="listGifts",
        tag="gifting",
        summary="The gift catalog",
        description="Open: no token (the catalog is the same for everyone).",
        responses={"200": _json("The active gifts.", _ref("GiftList"))},
    ),
    ("GET", "/v1/streams/{stream_id}/leaderboard"): Operation(
        operation_id="getLeaderboard",
        tag="gifting",
        summary="A stream's top gifters, most coins first",
        description="Open: no token (shown to every viewer of the stream). The largest "
        "`limit` is the setting LEADERBOARD_MAX_LIMIT "
        f"(default {_GIFTING_DEFAULTS.leaderboard_max_limit}).",
        query=[
            _limit(gifting_api.DEFAULT_LIMIT, _GIFTING_DEFAULTS.leaderboard_max_limit, "gifters")
        ],
        responses={
            "200": _json("The leaderboard.", _ref("Leaderboard")),
            "400": _response("BadRequest"),
        },
    ),
    ("GET", "/v1/payouts/{request_id}"): Operation(
        operation_id="getPayout",
        tag="payout",
        summary="A payout request and its outcome",
        description=_RECORD_OF.format(kind="payout", owner="creator_id"),
        responses={"200": _json("The payout.", _ref("Payout")), "404": _response("NotFound")},
    ),
    ("GET", "/v1/creators/{creator_id}/payouts"): Operation(
        operation_id="listPayouts",
        tag="payout",
        summary="A creator's payouts, newest first",
        description=_OWN_OR_OPERATOR.format(owner="creator_id"),
        query=[_limit(50, payout_api.MAX_PAGE, "payouts")],
        responses={
            "200": _json("The payouts.", _ref("PayoutList")),
            "400": _response("BadRequest"),
            "403": _response("Forbidden"),
        },
    ),
    ("GET", "/health/live"): Operation(
        operation_id="live",
        summary="Liveness",
        description="Open: no token (for probes). 200 while the process answers.",
        responses={"200": _json("Alive.", _ref("Liveness"))},
    ),
    ("GET", "/health/ready"): Operation(
        operation_id="ready",
        summary="Readiness",
        description="Open: no token (for probes). 200 when the database, Kafka and the "
        "outbox relay all answer, else 503.",
        responses={
            "200": _json("Ready.", _ref("Readiness")),
            "503": _json("Not ready: `checks` says what failed.", _ref("Readiness")),
        },
    ),
    ("GET", "/metrics"): Operation(
        operation_id="metrics",
        summary="Prometheus metrics",
        description="Token with the operator scope (Prometheus sends one); a user's token "
        "is answered 403.",
        operator_only=True,
        responses={
            "200": {
                "description": "The Prometheus text format.",
                "content": {CONTENT_TYPE_LATEST: {"schema": _STRING}},
            },
            "403": _response("Forbidden"),
        },
    ),
}
"""Every (method, path) a service serves: what it answers. Security is the route's."""


# --- the document ------------------------------------------------------------------


def _server(service: str) -> dict[str, str]:
    settings = SERVICES[service]
    return {
        "url": f"http://127.0.0.1:{settings.default_http_port}",
        "description": f"{service} on the local stack (`make up`): "
        f"{_SERVICE_ROLES[service]}. Elsewhere its HTTP_HOST and HTTP_PORT.",
    }


def _path_parameters(route: Route) -> list[dict[str, Any]]:
    found = []
    for name in route.param_convertors:
        if name not in PATH_PARAMETERS:
            raise ValueError(
                f"describe the path parameter {name!r} of {route.path} in PATH_PARAMETERS"
            )
        found.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": PATH_PARAMETERS[name],
                "schema": dict(_ID),
            }
        )
    return found


def _security(route: Route, operation: Operation) -> list[dict[str, list[str]]]:
    """As `BearerAuth` decides: an OpenRoute needs nothing, anything else a bearer token."""
    if isinstance(route, OpenRoute):
        return []
    return [{BEARER: [OPERATOR_SCOPE] if operation.operator_only else []}]


def _operation(service: str | None, route: Route, operation: Operation) -> dict[str, Any]:
    responses = dict(operation.responses)
    if not isinstance(route, OpenRoute):
        # BearerAuth answers these before the route runs.
        responses["401"] = _response("Unauthorized")
        responses["503"] = responses.get("503", _response("AuthUnavailable"))
    parameters = [*_path_parameters(route), *operation.query, *operation.headers]
    document: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "description": operation.description,
        "tags": [operation.tag or HEALTH_TAG],
        "security": _security(route, operation),
        "responses": dict(sorted(responses.items())),
    }
    if service is None and operation.tag:
        raise ValueError(f"{operation.operation_id} is tagged {operation.tag} but on every service")
    if service is not None and operation.tag != service:
        raise ValueError(
            f"{operation.operation_id} is served by {service}, tagged {operation.tag!r}"
        )
    if parameters:
        document["parameters"] = parameters
    if operation.request_body is not None:
        document["requestBody"] = dict(operation.request_body)
    return {**document, **operation.extra}


def _served() -> dict[tuple[str, str], dict[str, Route]]:
    """Each (method, path) served, with the route that serves it, by service."""
    found: dict[tuple[str, str], dict[str, Route]] = {}
    for service, routes in service_routes().items():
        for route in routes:
            if not isinstance(route, Route):
                raise ValueError(f"{service} serves {route!r}, which is not a Route")
            for method in served_methods(route):
                found.setdefault((method, route.path), {})[service] = route
    return found


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every service's HTTP interface, as JSON-ready data."""
    served = _served()
    undocumented = sorted(set(served) - set(OPERATIONS))
    if undocumented:
        raise ValueError(f"served but not in devstack.openapi.OPERATIONS: {undocumented}")
    unserved = sorted(set(OPERATIONS) - set(served))
    if unserved:
        raise ValueError(f"in devstack.openapi.OPERATIONS but served by no service: {unserved}")

    paths: dict[str, dict[str, Any]] = {}
    for (method, path), by_service in sorted(served.items(), key=lambda item: item[0][::-1]):
        routes = list(by_service.values())
        open_ = {isinstance(route, OpenRoute) for route in routes}
        if len(open_) != 1:
            raise ValueError(f"{method} {path} is open on some services and not others")
        everywhere = set(by_service) == set(SERVICES)
        if not everywhere and len(by_service) != 1:
            raise ValueError(f"{method} {path} is served by some services: {sorted(by_service)}")
        item = paths.setdefault(path, {})
        if not everywhere:
            (service,) = by_service
            item["servers"] = [_server(service)]
        item[method.lower()] = _operation(
            None if everywhere else next(iter(by_service)), routes[0], OPERATIONS[(method, path)]
        )

    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "coinstream HTTP",
            "version": metadata.version("coinstream"),
            "description": (
                "The read routes of coinstream's four services and payment's chargeback "
                "webhook (CONTRACT.md, HTTP; docs/http.md). Each service is its own server: "
                "a path only one service serves names it in `servers`; `/health/*` and "
                "`/metrics` are on every service. Every route needs `Authorization: Bearer "
                "<JWT>` unless its `security` is empty; a token reads its own `sub`'s data, "
                "a token whose `scope` holds `operator` reads any. Any other path answers "
                "401 without a valid token, else 404. Every GET also answers HEAD. JSON "
                "bodies are UTF-8; amounts follow the message rules (coins integer; "
                "diamonds integer or decimal string, never a float). Generated from the "
                "code by `make docs` (devstack/openapi.py); the Kafka interface is "
                "docs/asyncapi.json."
            ),
        },
        "servers": [_server(service) for service in SERVICES],
        "security": [{BEARER: []}],
        "tags": [
            *({"name": service, "description": _SERVICE_ROLES[service]} for service in SERVICES),
            {"name": HEALTH_TAG, "description": "On every service: probes and Prometheus."},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A JWT whose `sub` is a user or creator id, signed with "
                    "the key the services verify (JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL); "
                    f"`scope` holding `{OPERATOR_SCOPE}` reads any user's data and the "
                    "metrics. Local stack: `coinstream token ID [--operator]`.",
                }
            },
            "schemas": schemas(),
            "responses": RESPONSES,
        },
    }


def render() -> str:
    """The text of docs/openapi.json."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def check(docs_dir: Path = DOCS_DIR) -> list[str]:
    """What differs between docs_dir/openapi.json and what the code generates."""
    path = docs_dir / OPENAPI_FILE
    if not path.exists():
        return [f"docs/{OPENAPI_FILE}: missing"]
    if path.read_text(encoding="utf-8") != render():
        return [f"docs/{OPENAPI_FILE}: differs from what the code generates"]
    return []


def write(docs_dir: Path = DOCS_DIR) -> list[str]:
    """Regenerate docs_dir/openapi.json; return what was written."""
    path, text = docs_dir / OPENAPI_FILE, render()
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return [f"wrote docs/{OPENAPI_FILE}"]


def main(argv: Sequence[str] | None = None) -> int:
    return generated_docs.command(
        argv,
        prog="python -m devstack.openapi",
        what=f"docs/{OPENAPI_FILE}",
        check=check,
        write=write,
    )


if __name__ == "__main__":
    sys.exit(main())
