"""The Prometheus alert rules (deploy/prometheus) and the Grafana dashboard (deploy/grafana),
checked offline: `promtool check rules`, `promtool test rules` (what each alert does with
sample series), a runbook section for every alert, `max` over gauges every replica
exports alike, and a dashboard Grafana can import. That every metric they name is served
is tests/e2e/test_metrics_that_page.py.

promtool comes from Debian's `prometheus` package (`.ci/run` installs it); without it,
the promtool checks are skipped, saying so.
"""

import json
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from services.gifting import watch as gifting_watch
from services.payment import watch as payment_watch
from services.payout import watch as payout_watch
from services.wallet import watch as wallet_watch
from shared.saga_watch import OUTBOX_PROBES
from tests.alerting import (
    DASHBOARD,
    ROOT,
    RULE_TESTS,
    RULES,
    alerts,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    metric_names,
    named_metrics,
    rules,
)

OPERATIONS = ROOT / "docs" / "operations.md"
# Gauges read from a service's database: every replica exports the same value.
DB_GAUGES = {
    probe.name
    for probe in [
        *OUTBOX_PROBES,
        *gifting_watch.probes(stuck_after_s=60),
        *payment_watch.probes(),
        *payout_watch.probes(reconcile_after_s=30, stuck_after_s=60),
        *wallet_watch.probes(),
    ]
} | {"coinstream_purchases_in_doubt"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found: install Debian's `prometheus` package (.ci/run does)")
    return found


def run_promtool(*args: str | Path) -> str:
    result = subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_accepts_the_rules() -> None:
    output = run_promtool("check", "rules", RULES)
    assert f"SUCCESS: {len(rules())} rules found" in output


def test_each_alert_fires_on_its_sample_series_and_not_before() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", RULE_TESTS)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE):
        text = unicodedata.normalize("NFKC", heading).strip().lower()
        text = re.sub(r"[^\w\- ]", "", text)
        found.add(text.replace(" ", "-"))
    return found


def test_every_alert_is_explained_and_points_to_its_runbook_section() -> None:
    sections = anchors(OPERATIONS.read_text())
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names)), names
    for alert in alerts():
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/operations.md", alert["alert"]
        assert anchor in sections, f"{alert['alert']}: no section #{anchor} in {OPERATIONS}"


def test_the_alerts_cover_what_pages() -> None:
    """A stuck saga, growing lag, money in doubt, dead letters, reconciliation mismatches,
    a relay that does not publish, a service down."""
    watched = set().union(*(metric_names(str(alert["expr"])) for alert in alerts()))
    for metric in (
        "coinstream_gifts_pending_stuck",
        "coinstream_consumer_lag",
        "coinstream_consumer_oldest_unprocessed_seconds",
        "coinstream_consumer_stuck_seconds",
        "coinstream_consumer_retries_total",
        "coinstream_purchases_in_doubt",
        "coinstream_payouts_in_doubt",
        "coinstream_holds_past_deadline",
        "coinstream_clawbacks_pending_oldest_seconds",
        "coinstream_dead_letters_total",
        "coinstream_reconcile_mismatches",
        "coinstream_outbox_oldest_unpublished_seconds",
    ):
        assert metric in watched or _recorded(metric, watched), metric
    assert any(re.search(r"\bup\{", str(alert["expr"])) for alert in alerts())


def _recorded(metric: str, watched: set[str]) -> bool:
    """`metric` reaches the alerts through a recording rule they use."""
    used = " ".join(str(alert["expr"]) for alert in alerts())
    return any(
        metric in metric_names(str(rule["expr"])) and rule["record"] in used
        for rule in rules()
        if "record" in rule
    )


def test_gauges_every_replica_exports_alike_are_taken_with_max() -> None:
    """Two replicas reading the same rows report the same count: summing would double it."""
    for expr in [str(rule["expr"]) for rule in rules()] + dashboard_exprs():
        for name in metric_names(expr) & DB_GAUGES:
            wrapped = re.search(rf"max(?: by \([^)]*\))?\s*\(\s*{name}\b", expr)
            assert wrapped, f"{name} not aggregated with max in: {expr}"
            assert not re.search(rf"sum(?: by \([^)]*\))?\s*\(\s*{name}\b", expr), expr


def test_the_dashboard_is_importable_and_names_only_known_series() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "job"}
    panels = list(dashboard_panels())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert metric_names(expr) or "up{" in expr, f"{panel['title']}: {expr}"
    # Everything the alerts watch is on the dashboard too.
    on_board = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    in_alerts = set().union(*(metric_names(str(rule["expr"])) for rule in rules()))
    assert in_alerts <= on_board, in_alerts - on_board
    assert DASHBOARD.name.endswith(".json")


def test_the_names_are_metric_names() -> None:
    names = named_metrics()
    assert "coinstream_consumer_lag" in names
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in names), names


def test_the_chart_ships_the_same_rules_and_dashboard_for_its_jobs(tmp_path: Path) -> None:
    """metrics.prometheusRule / metrics.grafanaDashboard: the committed files (the chart's
    files/ links to them), their job selector narrowed to the release's Services: the
    four services' and the reconciliation watcher's (its gauges feed two alerts)."""
    kubernetes = pytest.importorskip("tests.unit.test_kubernetes")
    out = kubernetes.template(
        None, "metrics.prometheusRule.enabled=true", "metrics.grafanaDashboard.enabled=true"
    )
    assert out.returncode == 0, out.stderr
    objects = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    jobs = "rel-coinstream-(payment|wallet|gifting|payout|reconcile)"
    services = [o["metadata"]["name"] for o in objects if o["kind"] == "Service"]
    assert services and all(re.fullmatch(jobs, name) for name in services), services

    [rule] = [o for o in objects if o["kind"] == "PrometheusRule"]
    expected = yaml.safe_load(RULES.read_text().replace("coinstream.*", jobs))["groups"]
    assert rule["spec"]["groups"] == expected
    as_file = tmp_path / "rules.yaml"
    as_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert "SUCCESS" in run_promtool("check", "rules", as_file)

    [config] = [
        o for o in objects if o["kind"] == "ConfigMap" and "dashboard" in o["metadata"]["name"]
    ]
    kubernetes.validate(config, kubernetes.KUBE_VERSIONS[0])
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(config["data"]["coinstream.json"])
    assert shipped == json.loads(DASHBOARD.read_text().replace("coinstream.*", jobs))
