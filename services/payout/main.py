"""Wiring of the payout service. Cash-out arrives with the payout issue; for now it
starts, connects to Kafka and PostgreSQL, relays its outbox and reports its health."""

from starlette.applications import Starlette

from services.payout.settings import PayoutSettings
from shared.runtime import ServiceKit, serve


def create_app(settings: PayoutSettings | None = None) -> Starlette:
    return ServiceKit(settings or PayoutSettings()).http_app()


def run() -> None:
    settings = PayoutSettings()
    serve(create_app(settings), settings)
