"""Wiring of the payout service: settings -> database -> broker -> app."""

from collections.abc import Callable
from datetime import datetime

from starlette.applications import Starlette

from services.payout import api, handlers
from services.payout.provider import PayoutProvider, SimulatedBank
from services.payout.repository import PayoutRepository
from services.payout.service import PayoutMetrics, PayoutService
from services.payout.settings import PayoutSettings
from shared.contracts import utc_now
from shared.runtime import ServiceKit, serve


def create_app(
    settings: PayoutSettings | None = None,
    provider: PayoutProvider | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Starlette:
    """The payout app; `provider` defaults to the simulated bank, `clock` decides the
    daily limit's UTC day (tests move it)."""
    settings = settings or PayoutSettings()
    kit = ServiceKit(settings)
    bank = provider or SimulatedBank(lambda: kit.db.pool, latency_ms=settings.provider_latency_ms)
    metrics = PayoutMetrics(kit.registry)
    service = PayoutService(kit.db, PayoutRepository(), bank, settings, metrics, clock)
    kit.include(handlers.build_router(service, kit.dead_letters, settings))
    kit.run_in_background("payout-reconciliation", service.reconcile_forever)
    return kit.http_app(api.routes(service))


def run() -> None:
    settings = PayoutSettings()
    serve(create_app(settings), settings)
