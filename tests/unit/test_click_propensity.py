"""Unit tests for clickstream scoring: one model call per batch, latest propensity per user,
and a batch that goes on with features only when no model is served."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from handler_doubles import FakeContext, MemoryEventLog, MemorySink, _doc, _event, _set_data
from test_clickstream_handler import CLICKS, NOW_S, MemoryClickStore

from kestrel.click_events import parse_click
from kestrel.click_features import CLICK_FEATURE_NAMES, CLICK_FEATURE_SET_HASH
from kestrel.click_streaming import ClickPath
from kestrel.propensity import Propensity, latest_per_user
from kestrel.scoring import ModelWithdrawn, Scorer

SESSION_EVENTS = CLICK_FEATURE_NAMES.index("SESSION_EVENTS")


class SessionModel:
    """A `Model` double: propensity = session events / 10; counts its calls."""

    def __init__(self, version: str = "3") -> None:
        self.calls = 0
        self.manifest: Mapping[str, Any] = {
            "model_version": version,
            "feature_names": list(CLICK_FEATURE_NAMES),
            "feature_set_hash": CLICK_FEATURE_SET_HASH,
            "decision_thresholds": {"review": 1.0, "decline": 1.0},
        }

    def predict_proba(self, rows: Any) -> Any:
        self.calls += 1
        return np.asarray(rows, dtype=np.float64)[:, SESSION_EVENTS] / 10.0


class Source:
    """A `ModelSource` double offering `model` on every poll, or none while it is None."""

    def __init__(self, model: SessionModel | None) -> None:
        self.model = model

    def load(self) -> SessionModel:
        if self.model is None:
            raise ModelWithdrawn("no model in this test")
        return self.model

    def poll(self) -> SessionModel | None:
        return self.load()


@dataclass
class MemoryPropensities:
    """`PropensitySink` double: the batches published, or a failure."""

    batches: list[list[Propensity]] = field(default_factory=list)
    broken: bool = False

    def publish(self, propensities: Sequence[Propensity]) -> None:
        if self.broken:
            raise ConnectionError("redis down (double)")
        self.batches.append(list(propensities))


@pytest.fixture(autouse=True)
def _metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    monkeypatch.setattr(CLICKS.metrics.provider, "namespace", "Kestrel")


def _scorer(source: Source) -> Scorer:
    return Scorer(
        source,
        refresh_s=0.0,
        feature_names=CLICK_FEATURE_NAMES,
        feature_set_hash=CLICK_FEATURE_SET_HASH,
    )


def _path(scorer: Scorer, sink: MemoryPropensities, log: MemoryEventLog) -> ClickPath:
    return ClickPath(
        parse_click, MemoryClickStore(), MemorySink(), log, lambda: NOW_S, scorer=scorer,
        propensities=sink,
    )  # fmt: skip


def _run(path: ClickPath, event: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = CLICKS.lambda_handler(event, FakeContext(), path=path)
    return response


def test_click_path_scores_a_batch_in_one_call_and_keeps_each_users_latest() -> None:
    event = _event("kinesis-clickstream.json")
    # A second user, and the first user's newest event first in the batch.
    first, second, third = event["Records"]
    _set_data(second, {**_doc(second), "user_id": "U-7", "session_id": "U-7-S1"})
    event["Records"] = [third, first, second]
    model = SessionModel()
    sink, log = MemoryPropensities(), MemoryEventLog()
    assert _run(_path(_scorer(Source(model)), sink, log), event) == {"batchItemFailures": []}
    assert model.calls == 1
    (write,) = log.writes
    assert [(row["event_id"], row["propensity"], row["model_version"]) for row in write.events] == [
        ("E-000003", 0.1, "3"),  # the double counts the session in arrival order
        ("E-000001", 0.2, "3"),
        ("E-000002", 0.1, "3"),
    ]
    (published,) = sink.batches
    assert [(p.user_id, p.event_id, p.propensity, p.model_version) for p in published] == [
        ("U-000042", "E-000003", 0.1, "3"),  # the newest event, though it came first
        ("U-7", "E-000002", 0.1, "3"),
    ]
    assert published[0].event_time_ms > published[1].event_time_ms


def test_click_path_without_a_model_stores_features_logs_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source(None)
    scorer = _scorer(source)
    sink, log = MemoryPropensities(), MemoryEventLog()
    path = _path(scorer, sink, log)  # one per container, as clients.click_path() caches it
    with caplog.at_level(logging.WARNING, logger="kestrel.click_streaming"):
        for _ in range(3):
            assert _run(path, _event("kinesis-clickstream.json")) == {"batchItemFailures": []}
    warnings = [r for r in caplog.records if r.name == "kestrel.click_streaming"]
    assert len(warnings) == 1 and "no usable propensity model" in warnings[0].getMessage()
    assert sink.batches == []
    assert len(log.writes) == 3
    for row in log.writes[0].events:
        assert row["propensity"] is None and row["model_version"] is None
        assert len(row["features"]) == len(CLICK_FEATURE_NAMES)
    # A model arrives: scored from the next batch on; losing it again warns again.
    source.model = SessionModel("4")
    _run(path, _event("kinesis-clickstream.json"))
    assert [p.model_version for p in sink.batches[-1]] == ["4"]
    source.model = None
    scorer.refresh(force=True)  # ModelWithdrawn: serves nothing
    with caplog.at_level(logging.WARNING, logger="kestrel.click_streaming"):
        _run(path, _event("kinesis-clickstream.json"))
    warnings = [r for r in caplog.records if r.name == "kestrel.click_streaming"]
    assert len(warnings) == 2


def test_click_path_retries_the_batch_when_propensities_cannot_be_stored() -> None:
    sink, log = MemoryPropensities(broken=True), MemoryEventLog()
    with pytest.raises(ConnectionError):
        _run(_path(_scorer(Source(SessionModel())), sink, log), _event("kinesis-clickstream.json"))
    assert log.writes == []  # logged only once the propensities are stored


def test_latest_per_user_orders_by_time_then_event_id() -> None:
    def p(user: str, event_id: str, t: int) -> Propensity:
        return Propensity(user, "S", event_id, t, 0.5, "1")

    items = [p("A", "e2", 10), p("B", "x", 5), p("A", "e3", 10), p("A", "e9", 9)]
    assert [(x.user_id, x.event_id) for x in latest_per_user(items)] == [("A", "e3"), ("B", "x")]
    assert latest_per_user([]) == []
