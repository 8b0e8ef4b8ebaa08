"""A short `make chaos` run inside the test suite: four rounds, one of each fault kind
(a service SIGKILLed, the broker SIGKILLed, PostgreSQL stopped immediately, a replica
added or removed) under the mixed load; the outside checker finds nothing lost or
doubled, every balance equal to its model, the audit passing and the dead-letter
topics holding exactly the malformed messages sent.

It runs on an instance of its own (`chaos-test`: Kafka 26092, PostgreSQL 25436,
services from 27081), stopped at the end: the `test` instance's broker is never killed.
"""

import pytest

from chaos.faults import KINDS, Bounds
from chaos.run import Settings, chaos_run, report
from chaos.stack import CHAOS_TEST
from devstack import kafka, postgres
from devstack.services import running_services
from devstack.stack import down, ensure_infra

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    # The broker is SIGKILLed under the run's own clients: aiokafka drops the dead
    # connections unclosed and says so as it collects them.
    pytest.mark.filterwarnings("ignore:Unclosed AIOKafkaConnection:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


async def test_a_short_chaos_run_loses_and_doubles_nothing() -> None:
    missing = [*kafka.missing_tools(), *postgres.missing_tools()]
    if missing:
        pytest.skip("; ".join(missing))
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
    try:
        infra = await ensure_infra(CHAOS_TEST)
        result = await chaos_run(CHAOS_TEST, infra, settings)
        left = running_services(CHAOS_TEST)
    finally:
        await down(CHAOS_TEST)

    verdict = result.verdict
    print(report(result))
    assert verdict.violations() == [], report(result)
    assert sorted(f.kind for f in result.faults) == sorted(KINDS)
    assert {"purchase", "gift", "payout", "chargeback"} <= set(verdict.requests)
    assert verdict.answered == sum(verdict.requests.values()) - verdict.unsent > 50
    assert verdict.duplicates_sent > 0
    assert verdict.audit_code == 0
    assert left == {}  # every replica the run started is stopped
