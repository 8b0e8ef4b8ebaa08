"""Wiring of the payment service: settings -> database -> broker -> app."""

from starlette.applications import Starlette

from services.payment import api, handlers, webhooks
from services.payment.provider import CardProvider, SimulatedProvider
from services.payment.repository import PaymentRepository
from services.payment.service import PaymentMetrics, PaymentService
from services.payment.settings import PaymentSettings
from shared.runtime import ServiceKit, serve


def create_app(
    settings: PaymentSettings | None = None, provider: CardProvider | None = None
) -> Starlette:
    settings = settings or PaymentSettings()
    kit = ServiceKit(settings)
    provider = provider or SimulatedProvider(
        lambda: kit.db.pool, latency_ms=settings.provider_latency_ms
    )
    metrics = PaymentMetrics(kit.registry)
    service = PaymentService(kit.db, PaymentRepository(), provider, settings, metrics)
    kit.include(handlers.build_router(service, kit.dead_letters, settings))
    kit.run_in_background("payment-reconciliation", service.reconcile_forever)
    return kit.http_app([*api.routes(service), *webhooks.routes(service, settings, kit.registry)])


def run() -> None:
    settings = PaymentSettings()
    serve(create_app(settings), settings)
