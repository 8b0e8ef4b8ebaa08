"""Settings from environment variables, with the local stack (`make up`) as default."""

import os
from typing import Any, ClassVar

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared import kafka_admin
from shared.auth import AuthSettings
from shared.kafka_client import KafkaClientSettings
from shared.logs import LogFormat

LOCAL_DATABASE_URL: str = "postgresql://coinstream@127.0.0.1:25432/coinstream"


class InfraSettings(BaseSettings):
    """Where Kafka and PostgreSQL are; shared by services and operator commands.

    `kafka` reads the `KAFKA_*` variables of `shared.kafka_client` (address, SASL, TLS).
    """

    model_config = SettingsConfigDict(extra="ignore")

    kafka: KafkaClientSettings = Field(default_factory=KafkaClientSettings)
    database_url: str = Field(default=LOCAL_DATABASE_URL, repr=False)
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)
    # None: all replicas but one (2 of 3), see `kafka_admin.min_insync_replicas`.
    topic_min_insync_replicas: int | None = Field(default=None, ge=1)
    topic_retention_ms: int = Field(default=kafka_admin.RETENTION_MS, ge=-1)
    dead_letter_retention_ms: int = Field(default=kafka_admin.DEAD_LETTER_RETENTION_MS, ge=-1)

    def topic_layout(self) -> kafka_admin.TopicLayout:
        """How `coinstream setup` creates topics (TOPIC_* and DEAD_LETTER_RETENTION_MS)."""
        replicas = self.topic_replication_factor
        return kafka_admin.TopicLayout(
            partitions=self.topic_partitions,
            replication_factor=replicas,
            min_insync_replicas=self.topic_min_insync_replicas
            or kafka_admin.min_insync_replicas(replicas),
            retention_ms=self.topic_retention_ms,
            dead_letter_retention_ms=self.dead_letter_retention_ms,
        )


class _OwnDatabaseUrl(PydanticBaseSettingsSource):
    """`<SERVICE>_DATABASE_URL` (e.g. WALLET_DATABASE_URL): each service logs in as its
    own PostgreSQL role; DATABASE_URL stays the fallback for a single-role setup."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        service: str = getattr(self.settings_cls, "service_name", "")
        value = os.environ.get(f"{service.upper()}_DATABASE_URL") if service else None
        return {"database_url": value} if value else {}


class ServiceSettings(InfraSettings):
    """What every service process reads. Each service subclasses it with its name and port."""

    service_name: ClassVar[str] = ""
    default_http_port: ClassVar[int] = 8080

    http_host: str = "127.0.0.1"
    http_port: int = 0
    log_level: str = "INFO"
    # JSON lines, or readable lines (`console`); `auto`: readable on a terminal only.
    log_format: LogFormat = "auto"
    consumer_group_prefix: str = "coinstream"
    db_pool_min_size: int = Field(default=2, ge=1)
    db_pool_max_size: int = Field(default=10, ge=1)
    consumer_max_records: int = Field(default=500, ge=1)
    # How long one poll of the consumer waits when no record is there; records end the
    # wait at once, and no sleep follows an empty poll (shared/broker.py,
    # poll_without_sleeping), so this costs no latency: longer is fewer wake-ups.
    consumer_batch_timeout_ms: int = Field(default=500, ge=1)
    # While records come, the broker holds each fetch until 16 KB are there or 10 ms
    # passed, so batches grow with the rate; idle, aiokafka's defaults (shared/broker.py,
    # FetchPacing; docs/operations.md, "Fetching under load").
    consumer_fetch_min_bytes: int = Field(default=16384, ge=1)
    consumer_fetch_max_wait_ms: int = Field(default=10, ge=0)
    # Group membership (docs/operations.md, "Stopping and restarting a service"): a
    # replica that dies without leaving keeps its partitions until its session times
    # out; a live one heartbeats every interval and so learns of a rebalance within it.
    consumer_session_timeout_ms: int = Field(default=6000, ge=1000)
    consumer_heartbeat_interval_ms: int = Field(default=300, ge=50)
    # SIGTERM: how long each consumer may take to finish the batch in hand (FastStream's
    # graceful_timeout), how long the relay may take to publish what was committed, and
    # how long the consumers may take to leave their groups and the producer to close
    # (each: what has not is abandoned; the group drops a member that did not leave
    # when its session times out).
    shutdown_batch_timeout_s: float = Field(default=15.0, gt=0)
    shutdown_relay_timeout_s: float = Field(default=10.0, gt=0)
    shutdown_disconnect_timeout_s: float = Field(default=5.0, gt=0)
    relay_batch_size: int = Field(default=500, ge=1)
    relay_poll_interval_s: float = Field(default=0.5, gt=0)
    # After a commit that wrote to the outbox, the process's own relay publishes at once
    # (no NOTIFY on the way); false: the commit NOTIFYs and a LISTENing relay wakes.
    relay_kick_after_commit: bool = True
    # Metrics that page (docs/operations.md, "Metrics and alerts"): how often consumer lag
    # and saga states are read (never per record), and how long a saga step may wait for
    # another service before it counts as stuck.
    metrics_watch_interval_s: float = Field(default=15.0, gt=0)
    saga_stuck_after_s: float = Field(default=60.0, gt=0)
    # JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL, JWT_ISSUER, JWT_AUDIENCE: HTTP bearer tokens.
    auth: AuthSettings = Field(default_factory=AuthSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        own = _OwnDatabaseUrl(settings_cls)
        return init_settings, own, env_settings, dotenv_settings, file_secret_settings

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
