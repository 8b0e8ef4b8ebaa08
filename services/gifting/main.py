"""Wiring of the gifting service: settings -> database -> broker -> app."""

from starlette.applications import Starlette

from services.gifting import api, handlers, watch
from services.gifting.domain import GiftRules
from services.gifting.repository import GiftingRepository
from services.gifting.service import GiftingMetrics, GiftingService
from services.gifting.settings import GiftingSettings
from shared.runtime import ServiceKit, serve


def create_app(settings: GiftingSettings | None = None) -> Starlette:
    settings = settings or GiftingSettings()
    kit = ServiceKit(settings)
    rules = GiftRules(creator_share=settings.creator_share, max_quantity=settings.max_quantity)
    service = GiftingService(kit.db, GiftingRepository(), rules, GiftingMetrics(kit.registry))
    kit.include(handlers.consumed.router(service, kit.dead_letters, settings))
    kit.watch_sagas(watch.probes(stuck_after_s=settings.saga_stuck_after_s))
    return kit.http_app(api.routes(service, max_limit=settings.leaderboard_max_limit))


def run() -> None:
    settings = GiftingSettings()
    serve(create_app(settings), settings)
