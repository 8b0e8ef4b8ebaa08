"""Wiring of the payment service: settings -> database -> broker -> app."""

from collections.abc import Awaitable, Callable

import stripe
from starlette.applications import Starlette

from services.payment import api, handlers, watch, webhooks
from services.payment.provider import CardProvider, SimulatedProvider
from services.payment.repository import PaymentRepository
from services.payment.service import PaymentMetrics, PaymentService
from services.payment.settings import PaymentSettings
from services.payment.stripe_provider import StripeCardProvider
from shared.runtime import ServiceKit, serve
from shared.stripe_kit import close_with, make_client


def create_app(
    settings: PaymentSettings | None = None,
    provider: CardProvider | None = None,
    stripe_http: stripe.HTTPXClient | None = None,
) -> Starlette:
    """The payment app; `provider` defaults to the one PAYMENT_PROVIDER names
    (`stripe_http`: the transport of the Stripe client, for tests to record requests)."""
    settings = settings or PaymentSettings()
    kit = ServiceKit(settings)
    close: Callable[[], Awaitable[None]] | None = None
    if provider is None and settings.payment_provider == "stripe":
        http = stripe_http or stripe.HTTPXClient(timeout=settings.stripe.timeout_s)
        provider = StripeCardProvider(
            make_client(settings.stripe, http_client=http), lambda: kit.db.pool
        )
        close = http.close_async
    provider = provider or SimulatedProvider(
        lambda: kit.db.pool, latency_ms=settings.provider_latency_ms
    )
    metrics = PaymentMetrics(kit.registry)
    service = PaymentService(kit.db, PaymentRepository(), provider, settings, metrics)
    kit.include(handlers.consumed.router(service, kit.dead_letters, settings))
    kit.run_in_background("payment-reconciliation", service.reconcile_forever)
    kit.watch_sagas(watch.probes())
    app = kit.http_app([*api.routes(service), *webhooks.routes(service, settings, kit.registry)])
    return close_with(app, close) if close else app


def run() -> None:
    settings = PaymentSettings()
    serve(create_app(settings), settings)
