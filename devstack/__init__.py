"""The local real stack: Apache Kafka (KRaft, from Maven Central jars), PostgreSQL (from
the distribution's packages) and the four services as processes, without Docker.

`python -m devstack up|down|status|infra-up` for developers (`make up`); the functions
below for the test suite, which starts, kills and restarts service processes itself.
"""

from devstack.errors import DevstackError
from devstack.instances import INSTANCES, Endpoints, Instance, get_instance
from devstack.secrets import Secrets
from devstack.services import ServiceProcess, start_service, stop_service
from devstack.stack import ComponentStatus, down, ensure_infra, run_setup, status, up

__all__ = [
    "INSTANCES",
    "ComponentStatus",
    "DevstackError",
    "Endpoints",
    "Instance",
    "Secrets",
    "ServiceProcess",
    "down",
    "ensure_infra",
    "get_instance",
    "run_setup",
    "start_service",
    "status",
    "stop_service",
    "up",
]
