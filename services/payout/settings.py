from typing import ClassVar

from shared.settings import ServiceSettings


class PayoutSettings(ServiceSettings):
    service_name: ClassVar[str] = "payout"
    default_http_port: ClassVar[int] = 8084
