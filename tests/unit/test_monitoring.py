"""monitoring/: the alert rules and the dashboard are well formed and name only real metrics.

The exported names come from Kestrel's own collectors (the API's registry with the stream
collector on a snapshot where every figure is known), never from a list kept here.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kestrel.decisions import Rules, decide_with_rules
from kestrel.events import Transaction
from kestrel.telemetry import FRESHNESS_BINS, SCORE_BINS, TelemetrySnapshot

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "kestrel.json"
METRIC = re.compile(r"\b(kestrel_[A-Za-z0-9_]+)")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"\{([^}]*)\}")
DURATION = re.compile(r"^\d+[smhd]$")
SEVERITIES = {"page", "ticket"}


def _full_snapshot() -> TelemetrySnapshot:
    """A snapshot in which every figure is known, so every family has samples."""
    totals = {"applied": 9, "duplicates": 1, "poison": 1, "failed": 1, "batches": 3,
              "batch_errors": 1, "labels": 4, "frauds": 1, "decision:approve": 8}  # fmt: skip
    return TelemetrySnapshot(
        window_s=60, generated_at_ms=1, start_s=0, events=(5,) * 60, counts=dict(totals),
        totals=totals, freshness=(0, 3) + (0,) * (FRESHNESS_BINS - 2), freshness_max_ms=1.1,
        scores=(1,) * SCORE_BINS, model_version="3", last_batch_ms=1000,
        dlq={"poison": 1, "on_failure": 0}, drift={"status": "drift"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Every sample name Kestrel's /metrics exports -> the label names it carries."""
    api_dir = str(REPO / "functions" / "api")
    if api_dir not in sys.path:
        sys.path.insert(0, api_dir)
    metrics = importlib.import_module("chalicelib.telemetry").ApiMetrics()
    metrics.observe("/v1/score", "POST", 200, 0.3)
    tx = Transaction("T-1", "C-1", "TERM-1", 10.0, 1_795_857_302_123)
    metrics.decided([decide_with_rules(Rules(150.0, 100.0, 220.0), tx, (), "api")])
    metrics.track(lambda: "closed", lambda: True)
    metrics.track_stream(lambda window: _full_snapshot())
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def _check_expr(expr: str, exported: dict[str, set[str]]) -> None:
    names = METRIC.findall(expr)
    assert names, f"names no Kestrel metric: {expr}"
    unknown = sorted(set(names) - exported.keys())
    assert unknown == [], f"{unknown} are not exported (expression: {expr})"
    labels = set().union(*(exported[n] for n in names))
    used = {part.strip() for group in BY.findall(expr) for part in group.split(",") if part}
    used |= {m.split("=")[0].strip("!~ ") for group in MATCHER.findall(expr)
             for m in group.split(",") if m}  # fmt: skip
    assert used <= labels, f"labels {sorted(used - labels)} not on {names}: {expr}"
    for opening, closing in ("()", "[]", "{}"):
        assert expr.count(opening) == expr.count(closing), f"unbalanced {opening}: {expr}"


def test_monitoring_exported_names_come_from_the_collectors(exported: dict[str, set[str]]) -> None:
    assert "kestrel_api_requests_total" in exported  # the API's own
    assert "kestrel_stream_freshness_p99_seconds" in exported  # the stream's
    assert exported["kestrel_dlq_depth"] == {"queue"}


def test_monitoring_rules_are_well_formed_alerts() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    seen: set[str] = set()
    for group in doc["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"Kestrel[A-Za-z0-9]+", rule["alert"]), rule["alert"]
            assert rule["alert"] not in seen, f"duplicate alert {rule['alert']}"
            seen.add(rule["alert"])
            assert isinstance(rule["expr"], str) and DURATION.match(rule["for"]), rule
            assert rule["labels"]["severity"] in SEVERITIES, rule
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize(
    ("metric", "threshold"),
    [("kestrel_stream_freshness_p99_seconds", "> 1"), ("kestrel_dlq_depth", "> 0"),
     ("kestrel_stream_records_total", "> 0.01"), ("kestrel_drift_detected", "== 1"),
     ("kestrel_api_requests_total", "> 0.01")],
)  # fmt: skip
def test_monitoring_rules_cover_the_required_alerts(metric: str, threshold: str) -> None:
    matching = [r for r in _rules() if metric in r["expr"]]
    assert matching, f"no alert on {metric}"
    assert any(" ".join(r["expr"].split()).endswith(threshold) for r in matching), matching


def test_monitoring_rule_expressions_name_only_exported_metrics(
    exported: dict[str, set[str]],
) -> None:
    for rule in _rules():
        _check_expr(rule["expr"], exported)


def test_monitoring_dashboard_panels_name_only_exported_metrics(
    exported: dict[str, set[str]],
) -> None:
    exprs = list(_dashboard_exprs())
    assert len(exprs) >= 10
    for _, expr in exprs:
        _check_expr(expr, exported)


def test_monitoring_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("events", "freshness", "decisions", "fraud", "score", "dead-letter",
                  "model", "drift"):  # fmt: skip
        assert topic in titles, f"no panel on {topic}"


def test_monitoring_expression_check_catches_an_unknown_metric(
    exported: dict[str, set[str]],
) -> None:
    with pytest.raises(AssertionError, match="not exported"):
        _check_expr("max(kestrel_stream_freshness_p999_seconds) > 1", exported)
    with pytest.raises(AssertionError, match="labels"):
        _check_expr("max by (shard) (kestrel_dlq_depth) > 0", exported)
