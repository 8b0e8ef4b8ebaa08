"""The local stack's secrets: Kafka users' passwords, the TLS certificate authority and
the broker's certificate, PostgreSQL roles' passwords and the dev key that signs HTTP
tokens. Made once per instance in `.stack/<name>/secrets/` (mode 0700, files 0600), read
from there by whoever needs them; never printed, never put in a command line.

Production deployments bring their own (Secrets of the platform, a managed Kafka's
users, a real CA); nothing in the services depends on this module.
"""

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared import acl, auth
from shared.kafka_client import KafkaClientSettings

KAFKA_USERS = (*acl.PRINCIPALS, acl.BROKER)
"""SASL users created when the broker's storage is formatted."""

SCRAM_MECHANISM = "SCRAM-SHA-512"


def write_private(path: Path, text: str) -> None:
    """Write a text secret readable by its owner only."""
    _private(path, text.encode())


def _private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class Secrets:
    """The secrets folder of one stack instance."""

    root: Path

    # ─── Kafka ───────────────────────────────────────────────────────────────────

    def kafka_password_file(self, user: str) -> Path:
        return self.root / "kafka" / f"{user}.password"

    def kafka_password(self, user: str) -> str:
        return self.kafka_password_file(user).read_text().strip()

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.pem"

    @property
    def broker_pem(self) -> Path:
        """The broker's private key and certificate chain, one PEM file (Kafka's PEM store)."""
        return self.root / "tls" / "broker.pem"

    def kafka_client(self, principal: str, bootstrap: str) -> KafkaClientSettings:
        """How `principal` connects to this stack's Kafka: SCRAM over TLS, the password
        from its file."""
        return KafkaClientSettings(
            bootstrap_servers=bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism=SCRAM_MECHANISM,
            sasl_username=principal,
            sasl_password_file=self.kafka_password_file(principal),
            ssl_cafile=self.ca_file,
        )

    def ensure_kafka(self) -> None:
        """Passwords for every Kafka user and the TLS files, each made once."""
        for user in KAFKA_USERS:
            path = self.kafka_password_file(user)
            if not path.exists():
                _private(path, secrets.token_urlsafe(24).encode())
        if not (self.ca_file.exists() and self.broker_pem.exists()):
            self._make_tls()

    def _make_tls(self) -> None:
        """A CA of this stack and a broker certificate for 127.0.0.1 and localhost."""
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coinstream local CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kafka")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kafka"),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        key_pem = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _private(self.broker_pem, key_pem + cert.public_bytes(pem) + ca.public_bytes(pem))
        _private(
            self.root / "tls" / "ca-key.pem",
            ca_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        _private(self.ca_file, ca.public_bytes(pem))
        self.ca_file.chmod(0o644)  # a CA certificate is public

    # ─── PostgreSQL ──────────────────────────────────────────────────────────────

    def postgres_password(self, role: str) -> str:
        """The password of a PostgreSQL role of this stack, made the first time it is asked."""
        path = self.root / "postgres" / f"{role}.password"
        if not path.exists():
            _private(path, secrets.token_urlsafe(24).encode())
        return path.read_text().strip()

    def pgpass_file(self, role: str) -> Path:
        """A password file (libpq's format, read by asyncpg and psycopg) holding only this
        role's password: database URLs name it (`?passfile=`) instead of the password,
        so no URL, environment, command line or traceback shows a password."""
        path = self.root / "postgres" / f"{role}.pgpass"
        line = f"*:*:*:{role}:{self.postgres_password(role)}\n".encode()
        if not path.exists() or path.read_bytes() != line:
            _private(path, line)
        return path

    # ─── Provider webhooks ───────────────────────────────────────────────────────

    def webhook_secret_file(self) -> Path:
        """The HMAC secret the (simulated) card provider signs chargeback notices with."""
        path = self.root / "webhooks" / "chargebacks.secret"
        if not path.exists():
            _private(path, secrets.token_hex(32).encode())
        return path

    # ─── HTTP tokens ─────────────────────────────────────────────────────────────

    @property
    def jwt_private_key(self) -> Path:
        return self.root / "jwt-private.pem"

    @property
    def jwt_public_key(self) -> Path:
        return self.root / "jwt-public.pem"

    def ensure_jwt_keys(self) -> None:
        """The Ed25519 pair that signs (`coinstream token`) and verifies (the services'
        JWT_PUBLIC_KEY_FILE) HTTP bearer tokens, made once."""
        auth.ensure_key_pair(self.jwt_private_key, self.jwt_public_key)
