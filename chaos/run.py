"""One chaos run: replicas up, load on, one fault per round, drain, judge."""

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import httpx

from chaos.checker import (
    Verdict,
    judge_balances,
    judge_dead_letters,
    judge_latency,
    judge_outcomes,
    model,
)
from chaos.faults import Bounds, Fault, inject, plan, revive_the_dead
from chaos.load import Load
from chaos.observe import WATCHED, OutcomeLog
from chaos.stack import ChaosStack, drop_database, end_offsets, prepare
from devstack.audit import run_audit
from devstack.instances import Endpoints, Instance
from devstack.procs import say
from shared import auth
from shared.db_roles import READER

REPLICAS = {"payment": 2, "wallet": 2, "gifting": 2, "payout": 1}


@dataclass(frozen=True)
class Settings:
    rounds: int
    seed: int
    rate: float = 8.0
    warmup_s: float = 15.0
    settle_s: float = 20.0
    drain_s: float = 180.0
    factor: float = 3.0
    bounds: Bounds = field(default_factory=Bounds)
    replicas: dict[str, int] = field(default_factory=lambda: dict(REPLICAS))
    kinds: tuple[str, ...] | None = None  # a fixed plan instead of the seeded one
    max_minutes: float | None = None  # no new round after this long (then drain, judge)


@dataclass
class Result:
    settings: Settings
    verdict: Verdict
    faults: list[Fault]
    seconds: float
    drain_s: float
    send_retries: int


async def chaos_run(
    instance: Instance,
    infra: Endpoints,
    settings: Settings,
    *,
    first_replica: int = 0,
    enough: asyncio.Event | None = None,
) -> Result:
    """Run the rounds against `instance` (its Kafka and PostgreSQL must run), in a
    database and consumer groups of the run's own; stop every replica it started.
    `enough` set (Ctrl-C): no further round; the run drains and is judged as usual."""
    began = time.monotonic()
    fault_rng = random.Random(settings.seed)
    load_rng = random.Random(settings.seed + 1)
    stack = await prepare(instance, infra, first_replica=first_replica)
    try:
        await stack.start_many(settings.replicas)
        start = await end_offsets(stack.endpoints, WATCHED)
        marker = f"x{uuid.uuid4().hex[:6]}-"
        async with OutcomeLog(stack.endpoints, start, marker) as log:
            load = Load(stack.endpoints, log, load_rng, settings.rate, marker)
            await load.start()
            await _creators_known(stack, load.creators())
            result = await _rounds(stack, settings, fault_rng, log, load, enough)
        result.seconds = time.monotonic() - began
        return result
    finally:
        await stack.stop_all()
        await drop_database(infra, stack)


async def _rounds(
    stack: ChaosStack,
    settings: Settings,
    rng: random.Random,
    log: OutcomeLog,
    load: Load,
    enough: asyncio.Event | None,
) -> Result:
    stop = asyncio.Event()
    load_started = time.time()
    sending = asyncio.create_task(load.run(stop))
    await asyncio.sleep(settings.warmup_s)
    faults: list[Fault] = []
    died: list[str] = []
    kinds = list(settings.kinds) if settings.kinds else plan(rng, settings.rounds)
    failed = True
    try:
        deadline = (
            None if settings.max_minutes is None else time.monotonic() + settings.max_minutes * 60
        )
        for n, kind in enumerate(kinds, start=1):
            await asyncio.sleep(rng.uniform(*settings.bounds.gap))
            if (enough is not None and enough.is_set()) or (
                deadline is not None and time.monotonic() > deadline
            ):
                say(f"stopping after {n - 1} rounds (time budget or Ctrl-C)")
                break
            fault = await inject(stack, rng, settings.bounds, n, kind)
            faults.append(fault)
            took = fault.restored - fault.started
            say(f"round {n}/{len(kinds)}: {kind} {fault.target} ({took:.1f}s)")
            died += await revive_the_dead(stack)
        last = time.time()
        await asyncio.sleep(settings.settle_s)
        died += await revive_the_dead(stack)
        failed = False
    finally:
        stop.set()
        await sending
        await load.stop(abandon=failed)
    load_stopped = time.time()
    sent = {r for r, req in load.requests.items() if req.acked}
    drained = await log.wait_answered(sent, settings.drain_s)
    say(f"drained in {drained:.1f}s: {log.answered(sent)}/{len(sent)} answered")
    balances = await _settled_balances(stack, log, load)
    await asyncio.sleep(1.0)  # stragglers: a doubled outcome may come late

    verdict = judge_outcomes(load.requests, log.outcomes)
    verdict.duplicates_sent = load.duplicates_sent
    verdict.died_unasked = died
    judge_balances(verdict, model(log.outcomes), balances)
    judge_dead_letters(verdict, load.malformed, log.dead_letters)
    first_fault = faults[0].started if faults else load_stopped
    judge_latency(
        verdict,
        load.requests,
        log.outcomes,
        faults,
        baseline=(load_started + settings.warmup_s / 2, first_fault),  # warmed up
        final=(max(last, load_stopped - settings.settle_s / 2), load_stopped)
        if faults
        else (load_started, load_stopped),
        factor=settings.factor,
    )
    verdict.audit_code, verdict.audit_report = await run_audit(stack.endpoints.database(READER))
    return Result(settings, verdict, faults, 0.0, drained, load.send_retries)


async def _creators_known(stack: ChaosStack, creators: list[str]) -> None:
    """The identity reports carry no answer: wait until payout has kept them (SQL)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(stack.endpoints.database_url)
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM payout.creators WHERE creator_id = ANY($1)", creators
            )
        finally:
            await conn.close()
        if found == len(creators):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("payout did not record the run's creators within 60 s")


async def _settled_balances(
    stack: ChaosStack, log: OutcomeLog, load: Load
) -> dict[str, dict[str, object]]:
    """Every account of the run, read from the wallet's HTTP API, once no creator has
    diamonds on hold (a payout's hold is posted or voided after its outcome)."""
    accounts = set(load.creators())
    for outcome in (o for events in log.outcomes.values() for o in events.values()):
        for key in ("user_id", "sender_id", "creator_id"):
            if isinstance(outcome.body.get(key), str):
                accounts.add(outcome.body[key])
    token = auth.mint_token(stack.instance.secrets.jwt_private_key, "chaos", operator=True)
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(
        base_url=stack.url("wallet"), headers=headers, timeout=10, trust_env=False
    ) as http:

        async def read(account: str) -> dict[str, object]:
            answer = await http.get(f"/v1/users/{account}/balance")
            answer.raise_for_status()
            body: dict[str, object] = answer.json()
            return body

        while True:
            held = [await read(c) for c in load.creators()]
            if all(str(b["diamonds_on_hold"]) == "0" for b in held):
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        gate = asyncio.Semaphore(16)  # thousands of accounts: a few reads at a time

        async def gated(account: str) -> dict[str, object]:
            async with gate:
                return await read(account)

        ordered = sorted(accounts)
        bodies = await asyncio.gather(*(gated(account) for account in ordered))
        return dict(zip(ordered, bodies, strict=True))


def report(result: Result) -> str:
    """The run's figures, one block of plain text."""
    v, s = result.verdict, result.settings
    kinds = Counter(f.kind for f in result.faults)
    lines = [
        f"chaos run: seed {s.seed}, {len(result.faults)} rounds, {s.rate:g} requests/s, "
        f"{result.seconds:.0f} s",
        "faults by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
        "requests: "
        + ", ".join(f"{k} {n}" for k, n in sorted(v.requests.items()))
        + f" (total {sum(v.requests.values())}; duplicates sent {v.duplicates_sent}, "
        f"malformed sent {v.malformed_sent}, sends retried {result.send_retries}, "
        f"never acknowledged {v.unsent})",
        f"answered {v.answered}, lost {len(v.lost)}, doubled {len(v.doubled)}, "
        f"misfiled {len(v.misfiled)} (drained in {result.drain_s:.1f} s)",
        "outcomes: " + ", ".join(f"{k} {n}" for k, n in sorted(v.outcomes_by_topic.items())),
        f"balances: {v.accounts} accounts, wrong {len(v.wrong_balances)}",
        f"audit: {'passed' if v.audit_code == 0 else f'FAILED (exit {v.audit_code})'}",
        f"dead letters: {v.dlt_found} of {v.dlt_expected} malformed sent, "
        f"unexpected {len(v.dlt_unexpected)}, missing {len(v.dlt_missing)}, "
        f"extra copies {v.dlt_copies}",
        f"latency p50: before the first fault {_ms(v.baseline_p50_s)}, after the last "
        f"{_ms(v.final_p50_s)} (threshold {_ms(v.threshold_s)})",
        "recovery (fault → first answer / → latency back under the threshold):",
    ]
    by_kind: dict[str, list[float]] = {}
    for r in v.recoveries:
        lines.append(
            f"  {r.fault.round:>3} {r.fault.kind:<17} {r.fault.target:<12} "
            f"down {r.fault.restored - r.fault.started:5.1f}s  first {_s(r.first_answer_s)}  "
            f"back {_s(r.baseline_s)}"
        )
        if r.baseline_s is not None:
            by_kind.setdefault(r.fault.kind, []).append(r.baseline_s)
    for kind, times in sorted(by_kind.items()):
        median = sorted(times)[len(times) // 2]
        lines.append(
            f"  {kind}: back under the threshold after median {median:.1f}s, max "
            f"{max(times):.1f}s ({len(times)} of {kinds[kind]} before the next fault)"
        )
    for what, items in (
        ("lost", v.lost),
        ("doubled", v.doubled),
        ("misfiled", v.misfiled),
        ("wrong balance", v.wrong_balances),
        ("unexpected dead letter", v.dlt_unexpected),
        ("missing dead letter", v.dlt_missing),
    ):
        for item in items[:20]:
            lines.append(f"  {what}: {item}")
    if v.audit_code != 0:
        lines.append(v.audit_report)
    violations = v.violations()
    lines.append("VIOLATIONS: " + "; ".join(violations) if violations else "no violations")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def _s(seconds: float | None) -> str:
    return "  —  " if seconds is None else f"{seconds:5.1f}s"
