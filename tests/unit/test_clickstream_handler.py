"""Unit tests for the clickstream Kinesis handler against events/*.json with in-memory doubles."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from handler_doubles import (
    FakeContext,
    MemoryEventLog,
    MemorySink,
    _doc,
    _emf,
    _event,
    _failures,
    _load_handler,
    _sequence,
    _set_data,
)

from kestrel.click_events import ClickEvent, parse_click
from kestrel.click_features import (
    CLICK_FEATURE_NAMES,
    CLICK_FEATURE_SET_HASH,
    AppliedClick,
    ClickAggregates,
    SessionAggregates,
)
from kestrel.click_streaming import ClickPath

CLICKS = _load_handler("clickstream")
NOW_S = 1_795_857_400.0


@dataclass
class MemoryClickStore:
    """ClickStore double: counts each event id once; fails the ids in `broken`."""

    seen: dict[str, ClickEvent] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)

    def apply_clicks_in_parts(
        self, parts: Iterable[Sequence[ClickEvent]]
    ) -> Iterator[list[AppliedClick | Exception]]:
        for part in parts:
            yield self.apply_clicks(part)

    def apply_clicks(self, events: Sequence[ClickEvent]) -> list[AppliedClick | Exception]:
        results: list[AppliedClick | Exception] = []
        for e in events:
            if e.event_id in self.broken:
                results.append(RuntimeError("NOSCRIPT or worse (double)"))
                continue
            new = e.event_id not in self.seen
            self.seen.setdefault(e.event_id, e)
            session = [s for s in self.seen.values() if s.session_id == e.session_id]
            agg = ClickAggregates(
                views=(1, 1, 1),
                product_views=(0, 0, 0, 0),
                price_cents_30d=0,
                purchases_30d=0,
                last_purchase_ms=None,
                session=SessionAggregates(
                    len(session), 0, 0, 0, min(s.event_time_ms for s in session)
                ),
            )
            results.append(AppliedClick(agg, applied=new, user_known=len(self.seen) > 1))
        return results


@pytest.fixture(autouse=True)
def _metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    monkeypatch.setattr(CLICKS.metrics.provider, "namespace", "Kestrel")


def _invoke(
    event: dict[str, Any], store: MemoryClickStore, log: MemoryEventLog, sink: MemorySink
) -> dict[str, Any]:
    path = ClickPath(parse_click, store, sink, log, lambda: NOW_S)
    context = FakeContext(function_name="kestrel-ClickstreamFunction")
    response: dict[str, Any] = CLICKS.lambda_handler(event, context, path=path)
    return response


def test_clickstream_handler_applies_and_logs_each_event_with_its_vector(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-clickstream.json")
    store, log, sink = MemoryClickStore(), MemoryEventLog(), MemorySink()
    assert _invoke(event, store, log, sink) == {"batchItemFailures": []}
    emf = _emf(capsys.readouterr().out)
    assert (emf["ClicksApplied"], emf["ClicksDuplicates"], emf["ClicksProcessed"]) == (3, 0, 3)
    (write,) = log.writes
    assert (write.kind, write.time_field) == ("clicks", "event_time")
    assert [row["event_type"] for row in write.events] == [
        "page_view",
        "product_view",
        "add_to_cart",
    ]
    last = write.events[-1]
    assert last["feature_set_hash"] == CLICK_FEATURE_SET_HASH
    vector = dict(zip(CLICK_FEATURE_NAMES, last["features"], strict=True))
    assert vector["PRICE"] == 59.99 and vector["SESSION_EVENTS"] == 3
    assert vector["SESSION_DURATION_S"] == 62.754
    assert json.dumps(write.events)  # JSON-ready for the event log


def test_clickstream_handler_counts_a_retried_batch_as_duplicates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-clickstream.json")
    store, log, sink = MemoryClickStore(), MemoryEventLog(), MemorySink()
    _invoke(event, store, log, sink)
    capsys.readouterr()
    assert _invoke(event, store, log, sink) == {"batchItemFailures": []}
    emf = _emf(capsys.readouterr().out)
    assert (emf["ClicksApplied"], emf["ClicksDuplicates"]) == (0, 3)


def test_clickstream_handler_parks_poison_and_retries_only_store_failures() -> None:
    event = _event("kinesis-clickstream.json")
    _set_data(event["Records"][0], {**_doc(event["Records"][0]), "event_type": "click"})
    far = {**_doc(event["Records"][2]), "event_time": "2026-12-30T00:00:00Z"}
    _set_data(event["Records"][2], far)
    store = MemoryClickStore(broken={"E-000002"})
    log, sink = MemoryEventLog(), MemorySink()
    assert _invoke(event, store, log, sink) == _failures(event, 1)
    assert [(x.reason, x.sequence_number) for x in sink.letters] == [
        ("invalid_field", _sequence(event, 0)),
        ("invalid_field", _sequence(event, 2)),
    ]
    assert sink.letters[0].detail.startswith("event_type: must be one of")
    assert sink.letters[1].detail.startswith("event_time: ")
    assert log.writes == []


def test_clickstream_handler_retries_the_batch_when_the_event_log_fails() -> None:
    event = _event("kinesis-clickstream.json")
    with pytest.raises(OSError):
        _invoke(event, MemoryClickStore(), MemoryEventLog(broken=True), MemorySink())
