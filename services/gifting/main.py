"""Wiring of the gifting service: settings -> database -> broker -> app."""

from starlette.applications import Starlette

from services.gifting import api
from services.gifting.repository import GiftingRepository
from services.gifting.service import GiftingService
from services.gifting.settings import GiftingSettings
from shared.runtime import ServiceKit, serve


def create_app(settings: GiftingSettings | None = None) -> Starlette:
    settings = settings or GiftingSettings()
    kit = ServiceKit(settings)
    service = GiftingService(kit.db, GiftingRepository())
    return kit.http_app(api.routes(service))


def run() -> None:
    settings = GiftingSettings()
    serve(create_app(settings), settings)
