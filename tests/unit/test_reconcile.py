"""The reconciliation's registry, provider comparison and gauges, without a database
(tests/integration/test_reconcile.py runs the checks on real records)."""

import asyncio
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from shared import auth
from shared.cli import app as cli
from shared.reconcile.checks import (
    REGISTRY,
    FailedPurchasesWereNotCharged,
    PayoutsWerePaid,
    ProviderCheck,
    Result,
    SqlCheck,
)
from shared.reconcile.providers import ProviderRecord, providers
from shared.reconcile.report import Report, combined
from shared.reconcile.watch import Metrics, watch


def test_every_check_is_registered_once_with_its_name_key_and_advice() -> None:
    keys = [check.key for check in REGISTRY]
    names = [check.name for check in REGISTRY]
    assert len(set(keys)) == len(keys) == len(set(names)) == 14
    for check in REGISTRY:
        assert isinstance(check, SqlCheck | ProviderCheck)
        assert check.advice and check.key.isidentifier()


def test_the_simulated_books_are_read_unless_told_not_to() -> None:
    lookups = providers()
    assert (lookups.card.unavailable, lookups.bank.unavailable) == (None, None)
    assert "--card none" in str(providers(card="none").card.unavailable)
    assert "--bank none" in str(providers(bank="none").bank.unavailable)
    with pytest.raises(ValueError, match="unknown bank"):
        providers(bank="stripe")
    with pytest.raises(ValueError, match="unknown card"):
        providers(card="stripe")


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (ProviderRecord("paid", 2000, "USD"), None),
        (None, "the provider has no record of it"),
        (ProviderRecord("rejected", 2000, "USD"), "the provider says rejected"),
        (ProviderRecord("paid", 1999, "USD"), "the provider moved 1999 USD (minor units)"),
        (ProviderRecord("paid", 2000, "EUR"), "the provider moved 2000 EUR (minor units)"),
    ],
)
def test_a_payout_matches_the_bank_only_when_paid_the_same_amount(
    record: ProviderRecord | None, problem: str | None
) -> None:
    row: Any = {"amount_minor": 2000, "currency": "USD"}
    assert PayoutsWerePaid().problem(row, record) == problem


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (None, None),  # refused before any charge
        (ProviderRecord("declined", 99, "USD"), None),
        (ProviderRecord("approved", 99, "USD"), "the provider charged 99 USD (minor units)"),
    ],
)
def test_a_failed_purchase_matches_only_when_the_provider_took_no_money(
    record: ProviderRecord | None, problem: str | None
) -> None:
    row: Any = {"amount_minor": 99, "currency": "USD"}
    assert FailedPurchasesWereNotCharged().problem(row, record) == problem


def test_the_gauges_show_each_check_and_whether_the_last_run_read_the_database() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    credits, card = REGISTRY[0], next(c for c in REGISTRY if c.key == "purchases_without_charge")
    now = datetime.now(UTC)
    report = Report(
        [Result(credits, judged=5, mismatches=2, in_flight=1), Result(card, not_checked="no")],
        now,
        300,
        now - timedelta(seconds=300),
    )
    metrics.record(report, full=False, took_s=1.5)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("coinstream_reconcile_mismatches", check=credits.key) == 2
    assert value("coinstream_reconcile_in_flight", check=credits.key) == 1
    assert value("coinstream_reconcile_not_checked", check=card.key) == 1
    assert value("coinstream_reconcile_mismatches", check=card.key) is None
    assert value("coinstream_reconcile_last_run_success") == 1
    assert value("coinstream_reconcile_run_duration_seconds", kind="recent") == 1.5
    assert value("coinstream_reconcile_last_full_run_timestamp_seconds") == 0  # none yet

    metrics.failed()
    assert value("coinstream_reconcile_last_run_success") == 0
    assert value("coinstream_reconcile_mismatches", check=credits.key) == 2  # last seen


def test_the_watch_does_not_start_when_its_port_is_taken(tmp_path: Path) -> None:
    keys = auth.generate_key_pair(tmp_path / "private.pem", tmp_path / "public.pem")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli,
            ["reconcile", "--watch", "--metrics-port", str(port)],
            env={"JWT_PUBLIC_KEY_FILE": str(keys.public), "COLUMNS": "200"},
        )
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


async def test_a_signal_during_a_run_cancels_it_and_ends_the_watch() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def a_long_run(since: datetime | None) -> Report:
        started.set()
        try:
            await asyncio.sleep(600)  # a run over a large database
        finally:
            cancelled.set()
        raise AssertionError("not reached")

    watching = asyncio.create_task(
        watch(
            a_long_run,
            interval_s=60,
            full_every_s=3600,
            on_report=print,
            on_error=print,
            metrics=None,
        )
    )
    await started.wait()
    os.kill(os.getpid(), signal.SIGTERM)  # taken by the watch's handler on this loop
    async with asyncio.timeout(5):
        await watching
    assert cancelled.is_set()


T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CREDITS = REGISTRY[0]


def a_report(at: datetime, since: datetime | None, *results: Result) -> Report:
    return Report(list(results), at, 300, at - timedelta(seconds=300), since, examples=2)


def test_a_recent_run_adds_its_verdict_to_the_full_runs_on_the_records_before() -> None:
    full = a_report(
        T0, None, Result(CREDITS, judged=100, mismatches=1, in_flight=3, examples=("old",))
    )
    recent = a_report(
        T0 + timedelta(minutes=1),
        full.cutoff,
        Result(CREDITS, judged=7, mismatches=2, in_flight=1, examples=("new 1", "new 2")),
    )
    [result] = combined(full, recent).results
    assert (result.judged, result.mismatches, result.in_flight) == (107, 3, 1)
    assert result.examples == ("old", "new 1")  # oldest first, as many as asked
    assert combined(full, recent).since is None  # it speaks of every record
    assert combined(full, recent).cutoff == recent.cutoff

    elsewhere = a_report(recent.at, full.cutoff - timedelta(seconds=1), *recent.results)
    with pytest.raises(ValueError, match="from the full run's cutoff on"):
        combined(full, elsewhere)  # records judged twice, or none at all, would go unseen


async def test_the_watch_runs_full_first_then_recent_runs_from_its_cutoff_until_due() -> None:
    asked: list[datetime | None] = []
    reported: list[Report] = []
    clock = [T0]

    async def run_once(since: datetime | None) -> Report:
        asked.append(since)
        clock[0] += timedelta(seconds=10)
        found = 1 if since is None else 2  # the full run's one and each recent run's two
        return a_report(clock[0], since, Result(CREDITS, judged=found, mismatches=found))

    def on_report(report: Report) -> None:
        reported.append(report)
        if len(reported) == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    async def watch_five_runs(run: Callable[[datetime | None], Awaitable[Report]]) -> None:
        async with asyncio.timeout(10):
            await watch(
                run,
                interval_s=0.01,
                full_every_s=0.2,
                on_report=on_report,
                on_error=print,
                metrics=Metrics(registry),
            )

    registry = CollectorRegistry()
    await watch_five_runs(run_once)
    full_cutoff = T0 + timedelta(seconds=10) - timedelta(seconds=300)
    assert asked[0] is None
    assert set(asked[1:4]) == {full_cutoff}  # from the full run's cutoff on
    assert [r.results[0].mismatches for r in reported[:4]] == [1, 3, 3, 3]
    assert all(r.since is None for r in reported)
    assert registry.get_sample_value("coinstream_reconcile_last_full_run_timestamp_seconds")

    # A full run comes again once the last one started full_every_s ago.
    asked.clear()
    reported.clear()
    registry = CollectorRegistry()

    async def slow_run(since: datetime | None) -> Report:
        await asyncio.sleep(0.25)
        return await run_once(since)

    await watch_five_runs(slow_run)
    assert asked == [None] * 5  # each run took longer than full_every_s
