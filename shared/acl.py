"""Who may do what on Kafka: one principal per component, least privilege.

The table below is the whole policy (CONTRACT.md, Security): each service writes only
the topics it publishes and the dead-letter topics of what it consumes, reads only what
it consumes and uses only its own consumer group; `app` (upstream apps) writes only the
request topics and reads the outcome and wallet topics with groups named `app-…`;
`operator` is a super user of the cluster (set-up, dead-letter replay, tools that read
everything), named in the broker's `super.users` rather than here.
`tests/unit/test_acl.py` checks the table against what the services' code really
consumes and publishes.

`apply` writes the policy to a cluster through the Kafka protocol (CreateAcls is
idempotent: an ACL that exists is left as it is), as the operator.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest, DescribeAclsRequest

from shared import topics as t
from shared.kafka_client import KafkaClientSettings

SERVICES: Final = ("payment", "wallet", "gifting", "payout")
APP: Final = "app"
OPERATOR: Final = "operator"
BROKER: Final = "broker"
PRINCIPALS: Final = (*SERVICES, APP, OPERATOR)
"""The SASL users of a deployment (the broker's own user comes on top)."""

APP_GROUP_PREFIX: Final = "app-"

CONSUMES: Final[dict[str, tuple[str, ...]]] = {
    "payment": (t.PURCHASE_REQUESTED, t.CHARGEBACK_RECEIVED),
    "wallet": (
        t.PURCHASE_COMPLETED,
        t.PURCHASE_REVERSED,
        t.SPENDING_LIMIT_REQUESTED,
        t.GIFT_DEBIT_REQUESTED,
        t.DIAMONDS_HOLD_REQUESTED,
        t.PAYOUT_COMPLETED,
        t.PAYOUT_FAILED,
    ),
    "gifting": (t.GIFT_REQUESTED, t.GIFT_DEBIT_ANSWERED),
    "payout": (t.CREATOR_UPDATED, t.PAYOUT_REQUESTED, t.DIAMONDS_HOLD_ANSWERED),
}
"""The topics each service subscribes to."""

PUBLISHES: Final[dict[str, tuple[str, ...]]] = {
    "payment": (
        t.PURCHASE_COMPLETED,
        t.PURCHASE_FAILED,
        t.PURCHASE_REVERSED,
        # Signed chargeback notices from the provider's webhook become this request.
        t.CHARGEBACK_RECEIVED,
    ),
    "wallet": (
        t.SPENDING_LIMIT_UPDATED,
        t.COINS_CREDITED,
        t.COINS_DEBITED,
        t.DIAMONDS_CREDITED,
        t.COINS_CLAWED_BACK,
        t.GIFT_DEBIT_ANSWERED,
        t.DIAMONDS_HOLD_ANSWERED,
    ),
    "gifting": (t.GIFT_SENT, t.GIFT_REJECTED, t.GIFT_DEBIT_REQUESTED),
    "payout": (t.PAYOUT_COMPLETED, t.PAYOUT_FAILED, t.DIAMONDS_HOLD_REQUESTED),
}
"""The topics each service writes (through its outbox)."""

REQUEST_TOPICS: Final = (
    t.PURCHASE_REQUESTED,
    t.CHARGEBACK_RECEIVED,
    t.SPENDING_LIMIT_REQUESTED,
    t.GIFT_REQUESTED,
    t.CREATOR_UPDATED,
    t.PAYOUT_REQUESTED,
)
"""What upstream apps may write (CONTRACT.md, Requests)."""

APP_READS: Final = tuple(topic for topic in t.PUBLIC_TOPICS if topic not in REQUEST_TOPICS)
"""Outcome and wallet event topics: every public topic that is not a request."""


def writes(principal: str) -> tuple[str, ...]:
    """Every topic `principal` may write."""
    if principal == APP:
        return REQUEST_TOPICS
    own = PUBLISHES[principal]
    return (*own, *(t.dlq(topic) for topic in CONSUMES[principal]))


def reads(principal: str) -> tuple[str, ...]:
    """Every topic `principal` may read."""
    return APP_READS if principal == APP else CONSUMES[principal]


def owner_of(topic: str) -> str:
    """The principal that writes `topic` in normal operation: `app` for requests, else
    the service that publishes it (a `.dlq` topic: the service that consumes its origin)."""
    if topic in REQUEST_TOPICS:
        return APP
    for service in SERVICES:
        if topic in writes(service):
            return service
    raise KeyError(f"no principal writes {topic!r}")


# ─── Kafka's ACL vocabulary (org.apache.kafka.common.acl / resource) ─────────────────


class Resource(IntEnum):
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4


class Pattern(IntEnum):
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    READ = 3
    WRITE = 4
    DESCRIBE = 8


_ALLOW: Final = 3
_ANY: Final = 1  # ResourceType/PatternType/Operation/Permission "ANY" in a filter


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: `principal` may `operation` on the resource, from any host."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation

    def describe(self) -> str:
        kind = f"{self.resource.name.lower()} {self.pattern.name.lower()}"
        return f"User:{self.principal} {self.operation.name} {kind} {self.name}"


def policy(group_prefix: str = "coinstream") -> list[Acl]:
    """Every ACL of the deployment, for service consumer groups `<group_prefix>-<service>`."""
    acls: list[Acl] = []
    for principal in (*SERVICES, APP):
        for topic in writes(principal):
            acls += _on_topic(principal, topic, Operation.WRITE)
        for topic in reads(principal):
            acls += _on_topic(principal, topic, Operation.READ)
    acls += group_acls(group_prefix)
    acls.append(Acl(APP, Resource.GROUP, APP_GROUP_PREFIX, Pattern.PREFIXED, Operation.READ))
    return sorted(set(acls))


def group_acls(group_prefix: str) -> list[Acl]:
    """Each service may use its consumer group `<group_prefix>-<service>` and no other
    (a deployment with another CONSUMER_GROUP_PREFIX grants these for it)."""
    return [
        Acl(service, Resource.GROUP, f"{group_prefix}-{service}", Pattern.LITERAL, Operation.READ)
        for service in SERVICES
    ]


def _on_topic(principal: str, topic: str, operation: Operation) -> list[Acl]:
    return [
        Acl(principal, Resource.TOPIC, topic, Pattern.LITERAL, operation),
        Acl(principal, Resource.TOPIC, topic, Pattern.LITERAL, Operation.DESCRIBE),
    ]


class AclError(RuntimeError):
    """The cluster refused to create an ACL (not authorised, or no authorizer)."""


async def apply(kafka: KafkaClientSettings, acls: Iterable[Acl]) -> int:
    """Create the ACLs that do not exist yet (as a super user); returns how many were new."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        existing = await _existing(admin)
        missing = [acl for acl in acls if acl not in existing]
        for acl in missing:
            request = CreateAclsRequest(
                acl.resource,
                acl.name,
                acl.pattern,
                f"User:{acl.principal}",
                "*",
                acl.operation,
                _ALLOW,
            )
            response = await admin._send_request(request)
            for code, message in response.creation_responses:
                if code != 0:
                    raise AclError(f"cannot create {acl.describe()}: error {code} {message}")
        return len(missing)
    finally:
        await admin.close()


async def _existing(admin: AIOKafkaAdminClient) -> set[Acl]:
    request = DescribeAclsRequest(_ANY, None, _ANY, None, None, _ANY, _ANY)
    response = await admin._send_request(request)
    if response.error_code != 0:
        raise AclError(f"cannot list ACLs: error {response.error_code} {response.error_message}")
    found: set[Acl] = set()
    for resource_type, name, pattern, entries in response.resources:
        for principal, _host, operation, permission in entries:
            if permission != _ALLOW or not principal.startswith("User:"):
                continue
            try:
                found.add(
                    Acl(
                        principal.removeprefix("User:"),
                        Resource(resource_type),
                        name,
                        Pattern(pattern),
                        Operation(operation),
                    )
                )
            except ValueError:
                continue  # an ACL of a kind this policy never writes
    return found
