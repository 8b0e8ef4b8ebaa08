"""Wiring of the wallet: settings -> database -> broker -> app."""

from collections.abc import Callable
from datetime import datetime

from starlette.applications import Starlette

from services.wallet import api, handlers, watch
from services.wallet.service import WalletService
from services.wallet.settings import WalletSettings
from shared.contracts import utc_now
from shared.runtime import ServiceKit, serve


def create_app(
    settings: WalletSettings | None = None, clock: Callable[[], datetime] = utc_now
) -> Starlette:
    """The wallet app; `clock` decides the spending-limit periods (tests move it)."""
    settings = settings or WalletSettings()
    kit = ServiceKit(settings)
    service = WalletService(kit.db, clock, shards=settings.topic_partitions)
    kit.include(handlers.consumed.router(service, kit.dead_letters, settings))
    kit.watch_sagas(watch.probes())
    return kit.http_app(api.routes(service.reads))


def run() -> None:
    settings = WalletSettings()
    serve(create_app(settings), settings)
