"""Settings from environment variables, with the local stack (`make up`) as default."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_KAFKA: str = "127.0.0.1:9092"
LOCAL_DATABASE_URL: str = "postgresql://coinstream@127.0.0.1:55432/coinstream"


class InfraSettings(BaseSettings):
    """Where Kafka and PostgreSQL are; shared by services and operator commands."""

    model_config = SettingsConfigDict(extra="ignore")

    kafka_bootstrap_servers: str = LOCAL_KAFKA
    database_url: str = LOCAL_DATABASE_URL
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)


class ServiceSettings(InfraSettings):
    """What every service process reads. Each service subclasses it with its name and port."""

    service_name: ClassVar[str] = ""
    default_http_port: ClassVar[int] = 8080

    http_host: str = "127.0.0.1"
    http_port: int = 0
    log_level: str = "INFO"
    consumer_group_prefix: str = "coinstream"
    db_pool_min_size: int = Field(default=2, ge=1)
    db_pool_max_size: int = Field(default=10, ge=1)
    consumer_max_records: int = Field(default=500, ge=1)
    consumer_batch_timeout_ms: int = Field(default=10, ge=0)
    consumer_fetch_min_bytes: int = Field(default=1, ge=1)
    consumer_fetch_max_wait_ms: int = Field(default=500, ge=0)
    relay_batch_size: int = Field(default=500, ge=1)
    relay_poll_interval_s: float = Field(default=0.5, gt=0)

    def model_post_init(self, __context: object) -> None:
        if self.http_port == 0:
            self.http_port = self.default_http_port

    @property
    def db_schema(self) -> str:
        """The PostgreSQL schema this service owns."""
        return self.service_name

    @property
    def group_id(self) -> str:
        """The Kafka consumer group of this service: replicas share it and split partitions."""
        return f"{self.consumer_group_prefix}-{self.service_name}"
