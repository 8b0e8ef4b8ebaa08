"""A short `make chaos` run inside the test suite: four rounds, one of each fault kind
(a service SIGKILLed, the broker SIGKILLed, PostgreSQL stopped immediately, a replica
added or removed) under the mixed load; the outside checker finds nothing lost or
doubled, every balance equal to its model, the audit passing and the dead-letter
topics holding exactly the malformed messages sent."""

from typing import Any

import pytest

import devstack
from chaos.faults import KINDS, Bounds
from chaos.run import Settings, chaos_run, report
from devstack import kafka, postgres
from devstack.services import running_services

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    # The broker is SIGKILLed under the run's own clients: aiokafka drops the dead
    # connections unclosed and says so as it collects them.
    pytest.mark.filterwarnings("ignore:Unclosed AIOKafkaConnection:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

FIRST_REPLICA = 5  # pid files and ports apart from the e2e suite's own services


async def test_a_short_chaos_run_loses_and_doubles_nothing(infra: Any) -> None:
    if infra.backend != "devstack":
        pytest.skip("the faults kill the local stack's own broker and server")
    instance = devstack.get_instance("test")
    settings = Settings(
        rounds=len(KINDS),
        seed=11,
        rate=6.0,
        warmup_s=6.0,
        settle_s=10.0,
        drain_s=120.0,
        bounds=Bounds(gap=(1.0, 3.0), service_down=(0.5, 2.0), broker_down=(0.0, 2.0)),
        replicas={"payment": 1, "wallet": 2, "gifting": 1, "payout": 1},
        kinds=KINDS,
    )

    result = await chaos_run(instance, infra, settings, first_replica=FIRST_REPLICA)

    verdict = result.verdict
    print(report(result))
    assert verdict.violations() == [], report(result)
    assert sorted(f.kind for f in result.faults) == sorted(KINDS)
    assert {"purchase", "gift", "payout", "chargeback"} <= set(verdict.requests)
    assert verdict.answered == sum(verdict.requests.values()) - verdict.unsent > 50
    assert verdict.duplicates_sent > 0 and verdict.malformed_sent >= 0
    assert verdict.audit_code == 0
    # Kafka and PostgreSQL run on for the tests after this one; no replica is left.
    assert kafka.pid(instance) is not None and postgres.server_pid(instance) is not None
    leftovers = [
        name
        for name in running_services(instance)
        if name.split("-")[-1].isdigit() and int(name.split("-")[-1]) >= FIRST_REPLICA
    ]
    assert leftovers == []
