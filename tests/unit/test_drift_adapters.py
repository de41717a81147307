"""Unit tests for the drift adapters (event-log window, reports, manifest, DLQ depths), handler."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from drift_doubles import (
    END_MS,
    FakeS3,
    FakeSqs,
    N,
    gz_lines,
    logged_row,
    shipped_manifest,
    synthetic_manifest,
    synthetic_rows,
)
from handler_doubles import FakeContext

from kestrel.adapters.s3_drift_reports import S3DriftReports, active_manifest
from kestrel.adapters.s3_event_window import S3EventWindow, evenly_spaced
from kestrel.adapters.scipy_drift import ScipyDriftStatistics
from kestrel.adapters.sqs_queue_depths import SqsQueueDepths
from kestrel.drift_job import DriftJob
from kestrel.features import DAY_MS, FEATURE_SET_HASH
from kestrel.settings import default_model_dir
from kestrel_local.events import load_event

REPO = Path(__file__).resolve().parents[2]
BUCKET = "events-bucket"
ROWS = synthetic_rows(3, 12)


def _handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("drift_app", REPO / "functions/drift/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DRIFT = _handler()
UNITS = {"DriftPsiMax": "None", "DriftedFeatures": "Count"}
UNITS |= dict.fromkeys(("PoisonDLQDepth", "OnFailureQueueDepth"), "Count")


def _emf(captured: str) -> dict[str, Any]:
    """The EMF blob the handler printed: metric values, with the dimensions DriftAlarm needs."""
    (blob,) = [
        doc
        for doc in (json.loads(line) for line in captured.splitlines() if line.startswith("{"))
        if "_aws" in doc
    ]
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Kestrel" and directive["Dimensions"] == [["service"]]
    assert blob["service"] == "kestrel"  # POWERTOOLS_SERVICE_NAME in template.yaml
    values: dict[str, Any] = {"drift_status": blob["drift_status"]}
    for metric in directive["Metrics"]:
        assert metric["Unit"] == UNITS[metric["Name"]], metric
        value = blob[metric["Name"]]
        values[metric["Name"]] = value[0] if isinstance(value, list) else value
    return values


def _log(s3: FakeS3, day: str, name: str, rows: list[dict[str, Any]]) -> None:
    s3.put_object(
        Bucket=BUCKET, Key=f"events/transactions/dt={day}/{name}.jsonl.gz", Body=gz_lines(rows)
    )


def _event_log() -> FakeS3:
    """Two days of log: in-window rows, a duplicate, another feature set, other versions."""
    s3 = FakeS3()
    inside = END_MS - DAY_MS // 2
    _log(s3, "2018-08-13", "a", [logged_row("T-old", END_MS - 2 * DAY_MS, ROWS[0], 0.5)])
    _log(
        s3,
        "2018-08-14",
        "b",
        [
            logged_row("T-1", inside, ROWS[1], 0.1),
            logged_row("T-2", inside + 1, ROWS[2], 0.2, model_version="0"),
            logged_row("T-3", inside + 2, ROWS[3], 0.3, feature_set_hash="older"),
        ],
    )
    _log(s3, "2018-08-14", "c", [logged_row("T-1", inside, ROWS[1], 0.1)])  # a retried batch
    _log(s3, "2018-08-15", "d", [logged_row("T-late", END_MS, ROWS[4], 0.9)])  # at the end
    s3.put_object(Bucket=BUCKET, Key="events/labels/dt=2018-08-14/x.jsonl.gz", Body=b"")
    return s3


def test_drift_event_window_reads_each_logged_transaction_once() -> None:
    s3 = _event_log()
    window = S3EventWindow(s3.as_client, BUCKET).read(
        END_MS - DAY_MS, END_MS, FEATURE_SET_HASH, "1"
    )
    assert window.rows == 2 and window.skipped == 1
    assert window.features.tolist() == [ROWS[1].tolist(), ROWS[2].tolist()]
    assert window.scores.tolist() == [0.1]  # T-2 was scored by model 0
    assert (window.objects_read, window.objects_total) == (2, 2)  # the 08-14 partition only
    assert (window.start_ms, window.end_ms) == (END_MS - DAY_MS, END_MS)


def test_drift_event_window_samples_objects_across_the_window() -> None:
    s3 = FakeS3()
    for i in range(10):
        row = logged_row(f"T-{i}", END_MS - DAY_MS + i, ROWS[i % len(ROWS)], 0.1)
        _log(s3, "2018-08-14", f"{i:02d}", [row])
    window = S3EventWindow(s3.as_client, BUCKET, max_objects=4).read(
        END_MS - DAY_MS, END_MS, FEATURE_SET_HASH, "1"
    )
    assert (window.objects_read, window.objects_total, window.rows) == (4, 10, 4)
    assert s3.gets == 4
    assert [i for i in evenly_spaced([{"i": i} for i in range(10)], 4)] == [
        {"i": 0}, {"i": 3}, {"i": 6}, {"i": 9},
    ]  # fmt: skip


def test_drift_event_window_latest_event_and_empty_log() -> None:
    assert S3EventWindow(_event_log().as_client, BUCKET).latest_event_ms() == END_MS + 1
    assert S3EventWindow(FakeS3().as_client, BUCKET).latest_event_ms() is None
    empty = S3EventWindow(FakeS3().as_client, BUCKET).read(0, DAY_MS, FEATURE_SET_HASH, "1")
    assert empty.features.shape == (0, N) and empty.scores.shape == (0,)
    with pytest.raises(ValueError, match="EVENT_LOG_BUCKET"):
        S3EventWindow(FakeS3().as_client, "")


def test_drift_reports_go_to_a_dated_key_and_latest() -> None:
    s3 = FakeS3()
    uri = S3DriftReports(s3.as_client, BUCKET).write(
        {"status": "ok", "checked_at": "2018-08-15T00:01:00.000Z"}
    )
    key = "drift/reports/dt=2018-08-15/20180815T000100000Z.json"
    assert uri == f"s3://{BUCKET}/{key}"
    assert s3.json(BUCKET, key) == s3.json(BUCKET, "drift/latest.json") == {
        "status": "ok", "checked_at": "2018-08-15T00:01:00.000Z",
    }  # fmt: skip


def test_drift_manifest_follows_the_pointer_else_the_layer() -> None:
    s3 = FakeS3()
    layer = active_manifest(default_model_dir(), s3.as_client, BUCKET, "models/active.json")
    assert layer == shipped_manifest()  # no pointer yet: the layer's
    s3.put_object(Bucket=BUCKET, Key="models/7/manifest.json", Body=b'{"model_version": "7"}')
    pointer = json.dumps({"version": "7", "manifest_key": "models/7/manifest.json"}).encode()
    s3.put_object(Bucket=BUCKET, Key="models/active.json", Body=pointer)
    assert active_manifest(default_model_dir(), s3.as_client, BUCKET, "models/active.json") == {
        "model_version": "7"
    }
    assert active_manifest(default_model_dir()) == shipped_manifest()


def test_drift_queue_depths_never_raise() -> None:
    sqs = FakeSqs({"https://q/poison": 2, "https://q/failed": 0}, frozenset({"https://q/failed"}))
    depths = SqsQueueDepths(
        sqs.as_client, {"poison": "https://q/poison", "on_failure": "https://q/failed"}
    )
    assert depths.depths() == {"poison": 2, "on_failure": None}
    assert SqsQueueDepths(sqs.as_client, {"poison": ""}).depths() == {"poison": None}


@pytest.fixture(autouse=True)
def _metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The namespace and service template.yaml sets (read when the handler module loads)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    monkeypatch.setattr(DRIFT.metrics.provider, "namespace", "Kestrel")
    monkeypatch.setattr(DRIFT.metrics.provider, "service", "kestrel")


def test_drift_handler_checks_the_day_before_the_schedule_and_emits_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3 = FakeS3()
    start = END_MS - DAY_MS
    rows = synthetic_rows(9, 600, scale=1.5)  # inflated amounts: drift
    batch = [logged_row(f"T-{i}", start + i * 1000, r, 0.5) for i, r in enumerate(rows)]
    _log(s3, "2018-08-14", "batch", batch)
    job = DriftJob(
        source=S3EventWindow(s3.as_client, BUCKET),
        statistics=ScipyDriftStatistics(),
        manifest=synthetic_manifest,
        reports=(S3DriftReports(s3.as_client, BUCKET),),
    )
    depths = SqsQueueDepths(FakeSqs({"p": 3, "f": 1}).as_client, {"poison": "p", "on_failure": "f"})
    event = load_event(REPO / "events/schedule-drift.json")
    summary = DRIFT.lambda_handler(event, FakeContext(), job=job, depths=depths)
    assert summary["status"] == "drift" and summary["rows"] == 600
    assert summary["drifted"][0] == "TX_AMOUNT" and "score" in summary["drifted"]
    (uri,) = summary["reports"]
    assert uri.startswith(f"s3://{BUCKET}/drift/reports/dt=")
    report = s3.json(BUCKET, "drift/latest.json")
    assert s3.json(BUCKET, uri.removeprefix(f"s3://{BUCKET}/")) == report
    assert report["window"]["to"] == event["time"].replace("Z", ".000Z")
    emf = _emf(capsys.readouterr().out)
    assert emf["DriftedFeatures"] == len(summary["drifted"])
    assert emf["DriftPsiMax"] == pytest.approx(report["psi_max"], abs=1e-6)
    assert (emf["PoisonDLQDepth"], emf["OnFailureQueueDepth"]) == (3, 1)
    assert emf["drift_status"] == "drift"


def test_drift_handler_window_end_from_the_event_input(capsys: pytest.CaptureFixture[str]) -> None:
    s3 = FakeS3()
    job = DriftJob(
        source=S3EventWindow(s3.as_client, BUCKET),
        statistics=ScipyDriftStatistics(),
        manifest=synthetic_manifest,
    )
    depths = SqsQueueDepths(FakeSqs({}).as_client, {"poison": "", "on_failure": ""})
    summary = DRIFT.lambda_handler({"window_end": "latest"}, FakeContext(), job=job, depths=depths)
    assert summary["status"] == "unknown" and summary["rows"] == 0
    emf = _emf(capsys.readouterr().out)
    assert emf["DriftedFeatures"] == 0
    assert "DriftPsiMax" not in emf and "PoisonDLQDepth" not in emf
    assert emf["drift_status"] == "unknown"
    assert np.isfinite([v for k, v in emf.items() if k != "drift_status"]).all()


def _requirement_names(path: Path) -> set[str]:
    lines = path.read_text().splitlines()
    return {line.split("==")[0].lower() for line in lines if line and not line.startswith("#")}


def test_drift_function_imports_nothing_its_layers_lack() -> None:
    # What only the DepsLayer ships (onnxruntime, fastavro, chalice...) and the dev tools are
    # missing on Lambda: importing the handler and its wiring must not need them.
    only_deps = _requirement_names(REPO / "layers/deps/requirements.txt") - _requirement_names(
        REPO / "layers/drift-deps/requirements.txt"
    )
    blocked = {name.replace("-", "_") for name in only_deps} | {
        "pandas", "pyarrow", "sklearn", "mlflow", "moto", "kestrel_training", "kestrel_local",
    }  # fmt: skip
    assert {"onnxruntime", "fastavro"} <= blocked
    script = f"""
import importlib.abc, importlib.util, sys
BLOCKED = {sorted(blocked)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("not in DriftFunction's layers: " + name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("app", {str(REPO / "functions/drift/app.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import kestrel.drift_clients
print("imported")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.strip() == "imported", done.stderr
