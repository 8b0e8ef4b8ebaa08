"""Wiring of the payout service: settings -> database -> broker -> app."""

from collections.abc import Awaitable, Callable
from datetime import datetime

import stripe
from starlette.applications import Starlette

from services.payout import api, handlers, watch
from services.payout.provider import PayoutProvider, SimulatedBank
from services.payout.repository import PayoutRepository
from services.payout.service import PayoutMetrics, PayoutService
from services.payout.settings import PayoutSettings
from services.payout.stripe_provider import StripeTransfers
from shared.contracts import utc_now
from shared.runtime import ServiceKit, serve
from shared.stripe_kit import close_with, make_client


def create_app(
    settings: PayoutSettings | None = None,
    provider: PayoutProvider | None = None,
    clock: Callable[[], datetime] = utc_now,
    stripe_http: stripe.HTTPXClient | None = None,
) -> Starlette:
    """The payout app; `provider` defaults to the one PAYOUT_PROVIDER names
    (`stripe_http`: the Stripe client's transport, for tests to record requests),
    `clock` decides the daily limit's UTC day (tests move it)."""
    settings = settings or PayoutSettings()
    kit = ServiceKit(settings)
    close: Callable[[], Awaitable[None]] | None = None
    if provider is None and settings.payout_provider == "stripe":
        http = stripe_http or stripe.HTTPXClient(timeout=settings.stripe.timeout_s)
        provider = StripeTransfers(make_client(settings.stripe, http_client=http))
        close = http.close_async
    bank = provider or SimulatedBank(lambda: kit.db.pool, latency_ms=settings.provider_latency_ms)
    metrics = PayoutMetrics(kit.registry)
    service = PayoutService(kit.db, PayoutRepository(), bank, settings, metrics, clock)
    kit.include(handlers.consumed.router(service, kit.dead_letters, settings))
    kit.run_in_background("payout-reconciliation", service.reconcile_forever)
    kit.watch_sagas(
        watch.probes(
            reconcile_after_s=settings.reconcile_after_s,
            stuck_after_s=settings.saga_stuck_after_s,
        )
    )
    app = kit.http_app(api.routes(service))
    return close_with(app, close) if close else app


def run() -> None:
    settings = PayoutSettings()
    serve(create_app(settings), settings)
