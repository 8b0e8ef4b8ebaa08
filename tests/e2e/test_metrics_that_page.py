"""Every metric the alert rules and the Grafana dashboard name is served: scraped from the
four services running as processes (tests/e2e/conftest.py) and from `coinstream
reconcile --watch`; and the new gauges say what they should: a gift pending for an hour
and a payout hold past its deadline, written to the services' own schemas, show up."""

import asyncio
import os
import signal
import sys
import tempfile

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import db_roles, topics
from tests.alerting import named_metrics
from tests.e2e.conftest import Stack
from tests.support import eventually, free_port, stack_auth, unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Sample names each metric type exposes (a labelled counter with no sample yet is
# declared by its family: it is served, it has not counted anything yet).
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "gauge": ("",),
}


def served_names(text: str) -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(headers=stack_auth()) as http:
        response = await http.get(f"{url}/metrics")
    response.raise_for_status()
    return response.text


async def reconcile_metrics(stack: Stack) -> str:
    """The gauges of `coinstream reconcile --watch` after its first full run."""
    port = free_port()
    secrets = stack.endpoints.secrets
    assert secrets is not None  # the stack's key pair signs the tokens `scrape` sends
    env = {
        **os.environ,
        "DATABASE_URL": stack.endpoints.database(db_roles.READER),
        "JWT_PUBLIC_KEY_FILE": str(secrets.jwt_public_key),
    }
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "shared.cli", "reconcile", "--watch", "--interval", "5"),
            *("--metrics-port", str(port)),
            env=env,
            stdout=log,
            stderr=log,
        )

        async def ran() -> str | None:
            try:
                text = await scrape(f"http://127.0.0.1:{port}")
            except httpx.TransportError:
                return None
            return text if "coinstream_reconcile_last_run_success 1.0" in text else None

        try:
            return await eventually(ran, timeout_s=60, every_s=0.5)
        finally:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()


async def test_every_metric_the_rules_and_the_dashboard_name_is_served(stack: Stack) -> None:
    async def all_sampled() -> dict[str, str] | None:
        texts = {service: await scrape(url) for service, url in stack.urls.items()}
        # The timers have run once: lag and saga gauges hold values.
        ready = all(
            "coinstream_saga_watch_last_success_timestamp_seconds " in text
            and "coinstream_consumer_lag_sampled_timestamp_seconds " in text
            for text in texts.values()
        )
        return texts if ready else None

    texts = await eventually(all_sampled, timeout_s=60, every_s=1)
    for service, text in texts.items():  # every probe's SQL ran (a failed tick counts)
        assert samples(text, "coinstream_saga_watch_errors_total") == [({}, 0.0)], service
    served = set().union(*(served_names(text) for text in texts.values()))
    served |= served_names(await reconcile_metrics(stack))
    missing = named_metrics() - served
    assert not missing, f"named by deploy/prometheus or deploy/grafana, served by nobody: {missing}"

    # The wallet holds every partition of its topics (one replica): one lag series each.
    lag = samples(texts["wallet"], "coinstream_consumer_lag")
    completed = {s["partition"] for s, _ in lag if s["topic"] == topics.PURCHASE_COMPLETED}
    assert completed and completed == {str(p) for p in range(len(completed))}, lag
    assert all(value >= 0 for _, value in lag)


async def gauge(stack: Stack, service: str, name: str) -> float:
    [(_, value)] = samples(await scrape(stack.urls[service]), name)
    return value


async def test_a_stuck_gift_and_a_late_hold_show_in_their_gauges(stack: Stack) -> None:
    """Rows a stuck saga would leave, written straight into gifting's and the wallet's
    schemas, appear within one watch interval (15 s) and are gone after."""
    gift, hold = unique("stuck-gift"), unique("late-hold")
    conn = await asyncpg.connect(stack.endpoints.database())
    try:
        await conn.execute(
            "INSERT INTO gifting.gift_requests (request_id, sender_id, creator_id, gift_id,"
            " quantity, fingerprint, status, requested_at, created_at)"
            " VALUES ($1, 'u', 'c', 'rose', 1, 'f', 'pending', now(), now() - interval '1 hour')",
            gift,
        )
        await conn.execute(
            "INSERT INTO wallet.holds (request_id, payout_id, creator_id, units, status, deadline)"
            " VALUES ($1, $1, 'c', 1, 'open', now() - interval '1 minute')",
            hold,
        )

        async def seen() -> tuple[float, float, float] | None:
            stuck = await gauge(stack, "gifting", "coinstream_gifts_pending_stuck")
            oldest = await gauge(stack, "gifting", "coinstream_gifts_pending_oldest_seconds")
            late = await gauge(stack, "wallet", "coinstream_holds_past_deadline")
            return (stuck, oldest, late) if stuck >= 1 and late >= 1 else None

        stuck, oldest, late = await eventually(seen, timeout_s=45, every_s=1)
        assert stuck >= 1 and oldest >= 3600
    finally:
        await conn.execute("DELETE FROM gifting.gift_requests WHERE request_id = $1", gift)
        await conn.execute("DELETE FROM wallet.holds WHERE request_id = $1", hold)
        await conn.close()

    async def cleared() -> bool:
        return await gauge(stack, "wallet", "coinstream_holds_past_deadline") < late

    await eventually(cleared, timeout_s=45, every_s=1)
