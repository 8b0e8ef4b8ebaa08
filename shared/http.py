"""The HTTP side every service has: bearer authentication, health, metrics, JSON helpers
for read routes.

Every route needs a valid bearer token (`BearerAuth`), except an `OpenRoute`: a new
route is protected unless it says otherwise. A read route then decides what the token
may see: `authorize(request, owner_id)` (403 for another user's data) or `may_read`.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.auth import Principal, TokenError, TokenKeysUnavailable, TokenVerifier

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool]]

REALM = 'Bearer realm="coinstream"'


class OpenRoute(Route):
    """A route anyone may call, without a bearer token: health probes, the public
    catalog, a webhook that authenticates its caller by a signature of its own."""


class Forbidden(Exception):
    """The token is valid but may not see this; answered 403 by `BearerAuth`."""


def not_found(what: str) -> JSONResponse:
    """The contract's 404: a JSON error body."""
    return JSONResponse({"error": "not_found", "detail": what}, status_code=404)


def bad_request(detail: str) -> JSONResponse:
    return JSONResponse({"error": "bad_request", "detail": detail}, status_code=400)


def unauthorized(detail: str, *, invalid_token: bool) -> JSONResponse:
    """401 with the challenge of RFC 6750 (`error="invalid_token"` for a bad token)."""
    challenge = f'{REALM}, error="invalid_token"' if invalid_token else REALM
    return JSONResponse(
        {"error": "unauthorized", "detail": detail},
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )


def forbidden(detail: str) -> JSONResponse:
    return JSONResponse({"error": "forbidden", "detail": detail}, status_code=403)


def principal(request: Request) -> Principal:
    """Who the request's token speaks for (set by `BearerAuth`; never on an OpenRoute)."""
    found = request.scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise Forbidden("no verified token")  # an open route asked: refuse, never guess
    return found


def may_read(request: Request, owner_id: str) -> bool:
    """Whether the token may read `owner_id`'s data (its own, or any with `operator`)."""
    return principal(request).may_read(owner_id)


def authorize(request: Request, owner_id: str) -> None:
    """Refuse (403) unless the token may read `owner_id`'s data."""
    if not may_read(request, owner_id):
        raise Forbidden(f"this token may read only the data of {principal(request).subject!r}")


def require_operator(request: Request) -> None:
    """Refuse (403) unless the token has the operator scope."""
    if not principal(request).operator:
        raise Forbidden("this needs a token with the operator scope")


class BearerAuth:
    """ASGI middleware: an HTTP request needs `Authorization: Bearer <valid token>`
    unless an `OpenRoute` answers it. No token, or a bad or expired one: 401 (before any
    route runs). A valid one: its `Principal` in the request state, for the route to
    check; a route that raises `Forbidden` is answered 403."""

    def __init__(self, app: ASGIApp, verifier: TokenVerifier, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.verifier = verifier
        self.open_routes = [route for route in routes if isinstance(route, OpenRoute)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._open(scope) and (answer := await self._authenticate(scope)) is not None:
            await answer(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Forbidden as refused:  # raised by the route before it answered
            await forbidden(str(refused))(scope, receive, send)

    def _open(self, scope: Scope) -> bool:
        # PARTIAL: the path is an open route's, the method is not; the router answers 405.
        return any(route.matches(scope)[0] is not Match.NONE for route in self.open_routes)

    async def _authenticate(self, scope: Scope) -> Response | None:
        """None when the token is valid (its principal now in the state), else the answer."""
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthorized("a bearer token is needed", invalid_token=False)
        try:
            if self.verifier.fetches_keys:  # PyJWKClient fetches with blocking I/O
                found = await asyncio.to_thread(self.verifier.verify, token.strip())
            else:
                found = self.verifier.verify(token.strip())
        except TokenKeysUnavailable as error:
            log.error("cannot verify bearer tokens: %s", error)
            return JSONResponse(
                {"error": "auth_unavailable", "detail": str(error)}, status_code=503
            )
        except TokenError as error:
            return unauthorized(str(error), invalid_token=True)
        scope.setdefault("state", {})["principal"] = found
        return None


def bearer_auth(verifier: TokenVerifier, routes: Sequence[BaseRoute]) -> Middleware:
    """`BearerAuth` for a Starlette app whose routes are `routes`."""
    return Middleware(BearerAuth, verifier=verifier, routes=routes)


def health_routes(registry: CollectorRegistry, checks: Mapping[str, Check]) -> Sequence[BaseRoute]:
    """`/health/live`, `/health/ready` (every check answers), open to probes; and
    `/metrics`, for a token with the operator scope (Prometheus sends one)."""

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def ready(_: Request) -> Response:
        results: dict[str, Any] = {name: await check() for name, check in checks.items()}
        ok = all(results.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": results},
            status_code=200 if ok else 503,
        )

    async def metrics(request: Request) -> Response:
        require_operator(request)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [
        OpenRoute("/health/live", live),
        OpenRoute("/health/ready", ready),
        Route("/metrics", metrics),
    ]
