"""Stack instances: a name, its ports and its folder `.stack/<name>/` in the repository.

Three instances exist so that a stack started with `make up` (`default`), the one the
test suite uses (`test`) and the one `make chaos` breaks on purpose (`chaos`) never share
a port, a data folder or a pid file.
"""

import dataclasses
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from devstack.errors import DevstackError
from devstack.secrets import Secrets
from shared import acl, db_roles
from shared.kafka_client import KafkaClientSettings
from shared.migrations import SERVICES

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
ADMIN_ROLE = "coinstream"
"""The local stack's PostgreSQL administrator (a superuser with a password)."""
KAFKA_NODE_COUNTS = ("1", "3")
"""The Kafka layouts of the local stack: one node, or three (replication factor 3)."""


@dataclass(frozen=True)
class Endpoints:
    """Where a stack's Kafka and PostgreSQL answer, and how each component logs in.

    `secrets`: the local stack's (SASL SCRAM over TLS, one Kafka user per principal).
    `kafka_settings`: for a Kafka this stack does not run, the client settings every
    component uses (read from the `KAFKA_*` environment). Neither: plaintext, no users.
    """

    kafka_bootstrap: str
    database_url: str = field(repr=False)  # a DATABASE_URL given to us may hold a password
    secrets: Secrets | None = None
    kafka_settings: KafkaClientSettings | None = None
    database_roles: bool = True
    """Whether the services' PostgreSQL roles are the local stack's (passwords in
    `secrets`); False for a DATABASE_URL this stack does not run."""

    def kafka(self, principal: str = acl.OPERATOR) -> KafkaClientSettings:
        """The Kafka client settings of `principal` (`app`, `operator` or a service)."""
        if self.kafka_settings is not None:
            return self.kafka_settings
        if self.secrets is None:
            return KafkaClientSettings(bootstrap_servers=self.kafka_bootstrap)
        return self.secrets.kafka_client(principal, self.kafka_bootstrap)

    def database(self, role: str | None = None) -> str:
        """The database URL of a PostgreSQL role (a service's, or `db_roles.READER`) in
        the database of `database_url`; None: the administrator's. Without the local
        stack's secrets every role is the administrator (a single-role setup)."""
        if role is None or self.secrets is None or not self.database_roles:
            return self.database_url
        return db_roles.as_role(self.database_url, role, self.secrets.pgpass_file(role))

    def role_passwords(self) -> dict[str, str]:
        """Every service role's and the reader's password (the local stack's secrets)."""
        if self.secrets is None or not self.database_roles:
            raise DevstackError("no local secrets: roles are provisioned by the operator")
        return {
            role: self.secrets.postgres_password(role)
            for role in (*db_roles.SERVICES, db_roles.READER)
        }

    @property
    def secured(self) -> bool:
        """Whether each component is its own Kafka principal (ACLs apply)."""
        return self.secrets is not None and self.kafka_settings is None


@dataclass(frozen=True)
class Instance:
    """One local stack: its ports and the folder holding its data, logs and pid files."""

    name: str
    kafka_port: int
    kafka_controller_port: int
    postgres_port: int
    first_service_port: int

    @property
    def root(self) -> Path:
        return REPO_ROOT / ".stack" / self.name

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        """Pid files of the processes this instance started."""
        return self.root / "run"

    @property
    def kafka_dir(self) -> Path:
        return self.root / "kafka"

    @property
    def postgres_dir(self) -> Path:
        """The PostgreSQL data folder (PGDATA); also holds the server's unix socket.

        Inside `.stack/<name>/` unless we are root and the repository sits below a folder
        others cannot enter (a clone under /root or in a `mktemp -d` folder): the server
        runs as an unprivileged user who could not reach it, so the data goes to
        /var/lib/coinstream/<checkout>/ instead, one folder per checkout and instance.
        """
        local = self.root / "postgres"
        if os.geteuid() != 0 or _others_can_enter(REPO_ROOT):
            return local
        checkout = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]
        return Path("/var/lib/coinstream") / checkout / self.name / "postgres"

    @property
    def kafka_nodes(self) -> int:
        """How many Kafka nodes the instance runs: KAFKA_NODES when set (1 or 3), else
        as many as its storage was formatted for, else one."""
        wanted = os.environ.get("KAFKA_NODES")
        if wanted:
            if wanted not in KAFKA_NODE_COUNTS:
                raise DevstackError(
                    f"KAFKA_NODES={wanted!r}: the local stack runs "
                    f"{' or '.join(KAFKA_NODE_COUNTS)} Kafka nodes"
                )
            return int(wanted)
        return self.kafka_nodes_formatted or 1

    @property
    def kafka_nodes_formatted(self) -> int | None:
        """How many nodes the instance's Kafka storage was formatted for (None: not yet)."""
        marker = self.kafka_dir / "nodes"
        return int(marker.read_text()) if marker.exists() else None

    def kafka_node_ports(self, node: int) -> tuple[int, int]:
        """(client port, controller port) of Kafka node `node` (1-based): node n listens
        100·(n-1) ports above the first."""
        step = 100 * (node - 1)
        return self.kafka_port + step, self.kafka_controller_port + step

    @property
    def kafka_bootstrap(self) -> str:
        """Every node's client address, comma-separated, as Kafka clients take them."""
        return ",".join(
            f"127.0.0.1:{self.kafka_node_ports(node)[0]}" for node in range(1, self.kafka_nodes + 1)
        )

    @property
    def secrets(self) -> Secrets:
        """Passwords, TLS files and keys of this instance (`.stack/<name>/secrets`)."""
        return Secrets(self.root / "secrets")

    @property
    def local_endpoints(self) -> Endpoints:
        """The addresses of this instance's own Kafka and PostgreSQL."""
        return Endpoints(
            kafka_bootstrap=self.kafka_bootstrap,
            database_url=db_roles.as_role(
                f"postgresql://127.0.0.1:{self.postgres_port}/coinstream",
                ADMIN_ROLE,
                self.secrets.pgpass_file(ADMIN_ROLE),
            ),
            secrets=self.secrets,
        )

    def service_port(self, service: str, replica: int = 0) -> int:
        """HTTP port of a service process; replica n of a service sits 10·n ports higher."""
        return self.first_service_port + SERVICES.index(service) + 10 * replica

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


def _others_can_enter(folder: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (folder, *folder.parents))


# Every port below Linux's ephemeral range (32768-60999): a server restarted while its
# clients reconnect must not find its port taken as one of their local ports.
INSTANCES: dict[str, Instance] = {
    "default": Instance("default", 9092, 9093, 25432, 8081),
    "test": Instance("test", 19092, 19093, 25433, 18081),
    "chaos": Instance("chaos", 29092, 29093, 25434, 28081),
}


def stack_endpoints(instance: Instance) -> Endpoints:
    """The servers `make up` uses, as it decides: those named in the environment
    (KAFKA_BOOTSTRAP_SERVERS with the other KAFKA_* settings; DATABASE_URL), else the
    instance's own, with a principal and a role per component."""
    endpoints = instance.local_endpoints
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        endpoints = dataclasses.replace(endpoints, kafka_settings=KafkaClientSettings())
    if os.environ.get("DATABASE_URL"):
        endpoints = dataclasses.replace(
            endpoints, database_url=os.environ["DATABASE_URL"], database_roles=False
        )
    return endpoints


def get_instance(name: str) -> Instance:
    """The instance called `name` (`default` for `make up`, `test` for the test suite)."""
    try:
        return INSTANCES[name]
    except KeyError:
        raise DevstackError(
            f"unknown stack instance {name!r}; known: {', '.join(INSTANCES)}"
        ) from None
