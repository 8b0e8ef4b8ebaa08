"""The Kafka ACL policy (shared/acl.py) against what the code really does: every topic a
service subscribes to is one it may read, every event it publishes one it may write,
and nothing more; upstream apps write exactly the requests of CONTRACT.md."""

from devstack import asyncapi
from shared import acl, contracts, topics


def test_each_service_reads_exactly_what_its_handlers_subscribe_to() -> None:
    subscribed: dict[str, set[str]] = {service: set() for service in acl.SERVICES}
    for subscription in asyncapi.subscriptions():
        subscribed[subscription.service].add(subscription.topic)
    assert {service: set(acl.reads(service)) for service in acl.SERVICES} == subscribed


def test_each_service_writes_what_it_publishes_and_the_dead_letters_of_what_it_reads() -> None:
    for service, events in asyncapi.PUBLISHES.items():
        published = {event.topic for event in events}
        dead_letters = {topics.dlq(topic) for topic in acl.CONSUMES[service]}
        extra = set(acl.writes(service)) - published - dead_letters
        # Payment turns signed webhook notices into chargeback requests (issue 9).
        assert extra == ({topics.CHARGEBACK_RECEIVED} if service == "payment" else set())
        assert published | dead_letters <= set(acl.writes(service))


def test_apps_write_the_requests_of_the_contract_and_read_only_public_outcomes() -> None:
    assert set(acl.writes(acl.APP)) == set(contracts.REQUESTS)
    assert set(acl.reads(acl.APP)) == set(topics.PUBLIC_TOPICS) - set(contracts.REQUESTS)
    assert not set(acl.reads(acl.APP)) & set(topics.INTERNAL_TOPICS)


def test_no_two_services_write_the_same_topic() -> None:
    written = [topic for service in acl.SERVICES for topic in acl.writes(service)]
    assert len(written) == len(set(written))


def test_the_policy_grants_groups_by_prefix_and_nothing_to_the_operator() -> None:
    policy = acl.policy("coinstream")
    groups = {(a.principal, a.name, a.pattern) for a in policy if a.resource == acl.Resource.GROUP}
    assert groups == {
        *((s, f"coinstream-{s}", acl.Pattern.LITERAL) for s in acl.SERVICES),
        (acl.APP, "app-", acl.Pattern.PREFIXED),
    }
    assert all(a.principal != acl.OPERATOR for a in policy)  # a super user needs no ACL
    assert all(a.pattern == acl.Pattern.LITERAL for a in policy if a.resource == acl.Resource.TOPIC)
