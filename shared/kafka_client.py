"""How every Kafka client of the project connects: services' brokers, relay producers,
dead letters, topic administration, the `coinstream` CLI, benchmarks and tests.

One settings object, read from `KAFKA_*` environment variables, says where the brokers
are and how to authenticate (CONTRACT.md, Security): `KAFKA_SECURITY_PROTOCOL`
(PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), `KAFKA_SASL_MECHANISM` (PLAIN,
SCRAM-SHA-256, SCRAM-SHA-512), `KAFKA_SASL_USERNAME`, the password from
`KAFKA_SASL_PASSWORD` or the file named by `KAFKA_SASL_PASSWORD_FILE`, and TLS:
`KAFKA_SSL_CAFILE`, with `KAFKA_SSL_CERTFILE` and `KAFKA_SSL_KEYFILE` for mutual TLS.
The password is a `SecretStr`: it never appears in a repr, a log line or an error.
"""

import ssl
from pathlib import Path
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_KAFKA: str = "127.0.0.1:9092"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaConfigError(ValueError):
    """Client settings that cannot work (a SASL protocol without a user, a missing file)."""


class KafkaClientSettings(BaseSettings):
    """Where the brokers are and how this process authenticates to them."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore", frozen=True)

    bootstrap_servers: str = LOCAL_KAFKA
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(default=None, repr=False)
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "KafkaClientSettings":
        if self.uses_sasl:
            if not self.sasl_username:
                raise KafkaConfigError(f"{self.security_protocol} needs KAFKA_SASL_USERNAME")
            if self.sasl_password is None and self.sasl_password_file is None:
                raise KafkaConfigError(
                    f"{self.security_protocol} needs KAFKA_SASL_PASSWORD or "
                    "KAFKA_SASL_PASSWORD_FILE"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise KafkaConfigError("mutual TLS needs both KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE")
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def principal(self) -> str | None:
        """The SASL user this client authenticates as (None without SASL)."""
        return self.sasl_username if self.uses_sasl else None

    def password(self) -> str:
        """The SASL password, from the setting or, failing that, its file (read each time,
        so a rotated file is picked up by the next client built)."""
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is None:
            raise KafkaConfigError("no SASL password configured")
        try:
            return self.sasl_password_file.read_text().strip()
        except OSError as error:
            raise KafkaConfigError(
                f"cannot read KAFKA_SASL_PASSWORD_FILE {self.sasl_password_file}: {error.strerror}"
            ) from None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context that verifies the broker against the CA file (the system's
        trust store without one) and presents a client certificate for mutual TLS."""
        if not self.uses_tls:
            return None
        for name, path in (
            ("KAFKA_SSL_CAFILE", self.ssl_cafile),
            ("KAFKA_SSL_CERTFILE", self.ssl_certfile),
            ("KAFKA_SSL_KEYFILE", self.ssl_keyfile),
        ):
            if path is not None and not path.is_file():
                raise KafkaConfigError(f"{name} {path} is not a readable file")
        return create_ssl_context(  # type: ignore[no-any-return]
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
            certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
            keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
        )

    @property
    def servers(self) -> list[str]:
        """The bootstrap servers one by one (KAFKA_BOOTSTRAP_SERVERS is comma-separated):
        FastStream takes a string as a single address, aiokafka splits it itself."""
        return [server.strip() for server in self.bootstrap_servers.split(",") if server.strip()]

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.servers,
            "security_protocol": self.security_protocol,
        }
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.uses_sasl:
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.password(),
            }
        return options

    def faststream_security(self) -> BaseSecurity | None:
        """The same settings in the form FastStream's KafkaBroker takes."""
        context = self.ssl_context()
        if not self.uses_sasl:
            return BaseSecurity(ssl_context=context) if context is not None else None
        kind = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256}.get(
            self.sasl_mechanism, SASLScram512
        )
        return kind(
            username=self.sasl_username or "",
            password=self.password(),
            ssl_context=context,
            use_ssl=self.uses_tls,
        )

    def describe(self) -> str:
        """For logs and errors: where and as whom, never the password."""
        who = f" as {self.sasl_username} ({self.sasl_mechanism})" if self.uses_sasl else ""
        return f"{self.bootstrap_servers} over {self.security_protocol}{who}"

    def environment(self) -> dict[str, str]:
        """These settings as `KAFKA_*` variables for a child process. The password is
        passed as its file when there is one, so it never sits in an environment."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": self.security_protocol,
        }
        if self.uses_sasl:
            env["KAFKA_SASL_MECHANISM"] = self.sasl_mechanism
            env["KAFKA_SASL_USERNAME"] = self.sasl_username or ""
            if self.sasl_password_file is not None:
                env["KAFKA_SASL_PASSWORD_FILE"] = str(self.sasl_password_file)
            else:
                env["KAFKA_SASL_PASSWORD"] = self.password()
        for name, path in (
            ("KAFKA_SSL_CAFILE", self.ssl_cafile),
            ("KAFKA_SSL_CERTFILE", self.ssl_certfile),
            ("KAFKA_SSL_KEYFILE", self.ssl_keyfile),
        ):
            if path is not None:
                env[name] = str(path)
        return env
