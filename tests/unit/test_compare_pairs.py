"""benchmarks.compare's replica pairs: the order alternates, the ratios do not care."""

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from benchmarks import compare


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The runs in the order they ran, each with a throughput of its own (no stack)."""
    runs: list[str] = []
    replicas_up = False
    warmed_with: bool | None = None  # the replicas up at the last warm-up, until a run

    async def warm_replicas(_: argparse.Namespace) -> None:
        nonlocal warmed_with
        warmed_with = replicas_up

    def row(run: str, system: str) -> compare.Row:
        runs.append(run)
        return compare.Row(run, system, 0, 100.0 + len(runs), 0, 0, {}, 0)

    async def coinstream(run: str, _: argparse.Namespace, **__: Any) -> compare.Row:
        nonlocal warmed_with
        assert replicas_up == run.startswith("two replicas"), run
        # Each arm is warmed up with the replicas it is measured with, and only once.
        assert warmed_with is replicas_up, run
        warmed_with = None
        return row(run, "coinstream")

    async def ceiling(run: str, _: argparse.Namespace, **__: Any) -> compare.Row:
        return row(run, "ceiling (relay)")

    @asynccontextmanager
    async def second_replicas(**_: Any) -> AsyncIterator[None]:
        nonlocal replicas_up
        replicas_up = True
        yield
        replicas_up = False

    monkeypatch.setattr(compare, "coinstream_run", coinstream)
    monkeypatch.setattr(compare, "_ceiling", ceiling)
    monkeypatch.setattr(compare, "second_replicas", second_replicas)
    monkeypatch.setattr(compare, "warm_replicas", warm_replicas)
    return runs


@pytest.mark.parametrize("two_first", [False, True])
async def test_a_pair_runs_in_the_order_asked_and_names_each_run_by_its_role(
    ran: list[str], two_first: bool
) -> None:
    pair = await compare.replica_pair(3, argparse.Namespace(), two_first=two_first)

    if two_first:
        assert ran == [
            "two replicas, pair 3",
            "one replica, pair 3",
            "two processes per hop, pair 3",
            "one process per hop, pair 3",
        ]
    else:
        assert ran == [
            "one replica, pair 3",
            "two replicas, pair 3",
            "one process per hop, pair 3",
            "two processes per hop, pair 3",
        ]
    assert [row.run for row in pair.rows] == ran  # the table shows them as they ran
    assert pair.one.run.startswith("one replica") and pair.two.run.startswith("two replicas")
    assert pair.ceiling_one.run.startswith("one process")
    assert pair.ceiling_two.run.startswith("two processes")
