from typing import ClassVar

from shared.settings import ServiceSettings


class GiftingSettings(ServiceSettings):
    service_name: ClassVar[str] = "gifting"
    default_http_port: ClassVar[int] = 8083
