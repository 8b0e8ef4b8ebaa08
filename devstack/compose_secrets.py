"""`python -m devstack.compose_secrets /secrets`: the secrets of the Docker Compose stack.

compose.yaml's one-shot `secrets` container runs it (as root) into a named volume that
the other containers mount read-only. Made once, the same way as the local stack's
(devstack/secrets.py): a password per Kafka user and PostgreSQL role, the CA and the
broker's certificate, the webhook secret, and the broker's server.properties. Running
it again keeps what exists. Each file belongs to the user of the container that reads
it (Kafka's, PostgreSQL's, coinstream's) and is readable by it alone.
"""

import os
import sys
from pathlib import Path

from devstack.kafka import broker_properties, scram_format_args, write_properties
from devstack.secrets import Secrets, write_private
from shared import acl, db_roles

KAFKA_UID = 1000  # appuser in apache/kafka
POSTGRES_UID = 999  # postgres in the postgres image
APP_UID = 10001  # coinstream in our Dockerfile
ADMIN_ROLE = "coinstream"


def write(root: Path) -> None:
    secrets = Secrets(root)
    secrets.ensure_kafka()
    for role in (ADMIN_ROLE, *db_roles.SERVICES, db_roles.READER):
        secrets.pgpass_file(role)
    secrets.webhook_secret_file()
    secrets.ensure_jwt_keys()
    kafka = root / "kafka"
    write_properties(
        kafka / "server.properties",
        broker_properties(
            broker_password=secrets.kafka_password(acl.BROKER),
            listeners={
                "INTERNAL": ("0.0.0.0:9092", "kafka:9092"),
                "HOST": ("0.0.0.0:29092", "127.0.0.1:9092"),
            },
            controller="kafka:9093",
            keystore=str(secrets.broker_pem),
            truststore=str(secrets.ca_file),
            log_dir="/var/lib/kafka/data",
        ),
    )
    write_private(kafka / "format-args", "\n".join(scram_format_args(secrets)) + "\n")
    write_properties(  # what the broker's health check connects with
        kafka / "operator.properties",
        {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule "
            f'required username="operator" password="{secrets.kafka_password(acl.OPERATOR)}";',
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(secrets.ca_file),
        },
    )
    _hand_over(root, secrets)


def _hand_over(root: Path, secrets: Secrets) -> None:
    """Give each file to the container user that reads it (when run as root)."""
    if os.geteuid() != 0:
        return
    for path in root.rglob("*"):
        os.chown(path, APP_UID, APP_UID)
    for path in (
        secrets.broker_pem,
        secrets.kafka_password_file(acl.BROKER),
        *(root / "kafka").glob("*.properties"),
        root / "kafka" / "format-args",
    ):
        os.chown(path, KAFKA_UID, KAFKA_UID)
    os.chown(root / "postgres" / f"{ADMIN_ROLE}.password", POSTGRES_UID, POSTGRES_UID)
    os.chown(secrets.jwt_private_key, 0, 0)  # signs tokens: no container needs it
    for folder in (root, *(p for p in root.rglob("*") if p.is_dir())):
        folder.chmod(0o755)  # the folders; every file in them stays 0600


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "/secrets"))
