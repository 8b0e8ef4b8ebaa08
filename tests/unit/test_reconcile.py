"""The reconciliation's registry, provider comparison and gauges, without a database
(tests/integration/test_reconcile.py runs the checks on real records)."""

import asyncio
import os
import signal
import socket
from datetime import UTC, datetime
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
from shared.reconcile.report import Report
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
    report = Report(
        [Result(credits, judged=5, mismatches=2, in_flight=1), Result(card, not_checked="no")],
        datetime.now(UTC),
        300,
    )
    metrics.record(report)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("coinstream_reconcile_mismatches", check=credits.key) == 2
    assert value("coinstream_reconcile_in_flight", check=credits.key) == 1
    assert value("coinstream_reconcile_not_checked", check=card.key) == 1
    assert value("coinstream_reconcile_mismatches", check=card.key) is None
    assert value("coinstream_reconcile_last_run_success") == 1

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

    async def a_long_run() -> Report:
        started.set()
        try:
            await asyncio.sleep(600)  # a run over a large database
        finally:
            cancelled.set()
        raise AssertionError("not reached")

    watching = asyncio.create_task(
        watch(a_long_run, interval_s=60, on_report=print, on_error=print, metrics=None)
    )
    await started.wait()
    os.kill(os.getpid(), signal.SIGTERM)  # taken by the watch's handler on this loop
    async with asyncio.timeout(5):
        await watching
    assert cancelled.is_set()
