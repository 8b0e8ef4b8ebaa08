from typing import ClassVar

from shared.settings import ServiceSettings


class WalletSettings(ServiceSettings):
    service_name: ClassVar[str] = "wallet"
    default_http_port: ClassVar[int] = 8082
