"""The HTTP side every service has: health, metrics, JSON helpers for read routes."""

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

Check = Callable[[], Awaitable[bool]]


def not_found(what: str) -> JSONResponse:
    """The contract's 404: a JSON error body."""
    return JSONResponse({"error": "not_found", "detail": what}, status_code=404)


def bad_request(detail: str) -> JSONResponse:
    return JSONResponse({"error": "bad_request", "detail": detail}, status_code=400)


def health_routes(registry: CollectorRegistry, checks: Mapping[str, Check]) -> Sequence[BaseRoute]:
    """`/health/live`, `/health/ready` (every check answers) and `/metrics`."""

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def ready(_: Request) -> Response:
        results: dict[str, Any] = {name: await check() for name, check in checks.items()}
        ok = all(results.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": results},
            status_code=200 if ok else 503,
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/health/live", live),
        Route("/health/ready", ready),
        Route("/metrics", metrics),
    ]
