from typing import ClassVar

from shared.settings import ServiceSettings


class PaymentSettings(ServiceSettings):
    service_name: ClassVar[str] = "payment"
    default_http_port: ClassVar[int] = 8081

    provider_latency_ms: int = 0
    """Simulated provider round trip, so benchmarks can model a real card network."""
