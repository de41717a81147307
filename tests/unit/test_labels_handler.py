"""Unit tests for the labels Kinesis handler against events/*.json with in-memory port doubles."""

from __future__ import annotations

import pytest
from handler_doubles import (
    FRESHNESS,
    LABELS,
    LABELS_ARN,
    SHARD,
    TRANSACTIONS,
    FakeContext,
    MemoryFeatureStore,
    MemorySink,
    _doc,
    _emf,
    _event,
    _failures,
    _invoke_labels,
    _label_path,
    _ports,
    _sequence,
    _set_data,
)

from kestrel import clients


@pytest.fixture(autouse=True)
def _metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The namespace template.yaml sets (the handlers' Metrics read it at import time)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    for module in (TRANSACTIONS, LABELS):
        monkeypatch.setattr(module.metrics.provider, "namespace", "Kestrel")


def test_labels_handler_applies_only_fraud_labels(capsys: pytest.CaptureFixture[str]) -> None:
    event = _event("kinesis-labels.json")
    ports = _ports()
    response = _invoke_labels(event, ports)
    assert response == {"batchItemFailures": []}
    assert [label.transaction_id for label in ports.store.labels_received] == ["T-000003"]
    assert ports.store.frauds == {"TERM-0007": {"T-000003"}}
    assert ports.sink.letters == []
    emf = _emf(capsys.readouterr().out)
    assert (emf["LabelsApplied"], emf["LabelsDuplicates"], emf["LabelsFailed"]) == (1, 0, 0)
    assert emf["PoisonRecords"] == 0
    assert not set(FRESHNESS) & set(emf)  # labels carry no freshness
    # Both labels, fraud or not, reach the event log in one write.
    assert len(ports.log.writes) == 1
    write = ports.log.writes[0]
    assert (write.kind, write.time_field) == ("labels", "label_time")
    assert write.batch_id == f"{SHARD}-{_sequence(event, 0)}-{_sequence(event, 1)}"
    assert [(e["transaction_id"], e["is_fraud"]) for e in write.events] == [
        ("T-000003", True),
        ("T-000001", False),
    ]
    assert write.events[0]["label_time"] == 1_796_479_331_000


def test_labels_handler_reports_a_repeated_fraud_label_as_duplicate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-labels.json")
    ports = _ports()
    _invoke_labels(event, ports)
    capsys.readouterr()
    response = _invoke_labels(event, ports)  # the whole batch again, as on a retry
    assert response == {"batchItemFailures": []}
    emf = _emf(capsys.readouterr().out)
    assert (emf["LabelsApplied"], emf["LabelsDuplicates"]) == (0, 1)


def test_labels_handler_sends_invalid_label_to_sink() -> None:
    event = _event("kinesis-labels.json")
    _set_data(event["Records"][0], {**_doc(event["Records"][0]), "is_fraud": "yes"})
    ports = _ports()
    response = _invoke_labels(event, ports)
    assert response == {"batchItemFailures": []}
    assert [(x.reason, x.sequence_number) for x in ports.sink.letters] == [
        ("invalid_field", _sequence(event, 0))
    ]
    letter = ports.sink.letters[0]
    assert letter.detail.startswith("is_fraud:")
    assert letter.stream_arn == LABELS_ARN
    assert letter.payload_b64 == event["Records"][0]["kinesis"]["data"]
    assert ports.store.labels_received == []  # the other label is not fraud
    assert [e["transaction_id"] for e in ports.log.writes[0].events] == ["T-000001"]


def test_labels_handler_dead_letters_transactions_from_the_wrong_stream() -> None:
    ports = _ports()
    response = _invoke_labels(_event("kinesis-transactions.json"), ports)
    assert response == {"batchItemFailures": []}
    assert [x.reason for x in ports.sink.letters] == ["missing_field"] * 3
    assert ports.log.writes == []


def test_labels_handler_reports_a_store_error_with_its_sequence_number() -> None:
    event = _event("kinesis-labels.json")
    ports = _ports(store=MemoryFeatureStore(fail_on=["T-000003"]))
    response = _invoke_labels(event, ports)
    assert response == _failures(event, 0)
    assert ports.store.frauds == {}
    assert [e["transaction_id"] for e in ports.log.writes[0].events] == ["T-000001"]


def test_labels_handler_raises_when_the_whole_store_fails() -> None:
    ports = _ports(store=MemoryFeatureStore(down=True))
    with (
        pytest.raises(ConnectionError),
        pytest.warns(UserWarning, match="No application metrics"),
    ):
        _invoke_labels(_event("kinesis-labels.json"), ports)
    assert ports.log.writes == []


def test_labels_handler_reports_poison_as_failure_when_sink_fails() -> None:
    event = _event("kinesis-labels.json")
    _set_data(event["Records"][1], {"transaction_id": "T-000001"})
    ports = _ports(sink=MemorySink(broken=True))
    response = _invoke_labels(event, ports)
    assert response == _failures(event, 1)
    assert ports.store.frauds == {"TERM-0007": {"T-000003"}}


def test_labels_handler_defaults_to_the_client_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = _ports()
    monkeypatch.setattr(clients, "label_path", lambda: _label_path(ports))
    response = LABELS.lambda_handler(
        _event("kinesis-labels.json"), FakeContext(function_name="kestrel-LabelsFunction")
    )
    assert response == {"batchItemFailures": []}
    assert ports.store.frauds == {"TERM-0007": {"T-000003"}}
