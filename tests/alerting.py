"""What the committed alert rules and Grafana dashboard name (deploy/prometheus,
deploy/grafana): read by tests/unit/test_alert_rules.py and
tests/e2e/test_metrics_that_page.py."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "coinstream-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "coinstream-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "coinstream.json"

# A metric name in PromQL: ours, FastStream's or prometheus_client's process and GC
# collectors' (recording rules are `coinstream:...`, Prometheus's own `up` is not served
# by anyone).
_METRIC = re.compile(
    r"(?<![\w:])((?:coinstream|faststream|process|python_gc)_[A-Za-z0-9_]+)(?![\w:])"
)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def named_metrics() -> set[str]:
    """Every metric the rules and the dashboard name, as Prometheus stores it
    (a counter with `_total`, a histogram's `_bucket`)."""
    exprs = [str(rule["expr"]) for rule in rules()] + dashboard_exprs()
    return set().union(*(metric_names(expr) for expr in exprs))
