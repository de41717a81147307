"""Unit tests for the transactions Kinesis handler against events/*.json with port doubles."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
from handler_doubles import (
    LABELS,
    SHARD,
    TRANSACTIONS,
    TRANSACTIONS_ARN,
    FakeContext,
    MemoryEventLog,
    MemoryFeatureStore,
    MemorySink,
    _doc,
    _emf,
    _event,
    _failures,
    _invoke_transactions,
    _ports,
    _sequence,
    _set_data,
    _transaction_path,
)
from stream_doubles import shipped_scorer

from kestrel import clients
from kestrel.features import (
    FEATURE_NAMES,
    FEATURE_SET_HASH,
    NO_PREVIOUS_S,
)
from kestrel.ports import DeadLetter


@pytest.fixture(autouse=True)
def _metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The namespace template.yaml sets (the handlers' Metrics read it at import time)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    for module in (TRANSACTIONS, LABELS):
        monkeypatch.setattr(module.metrics.provider, "namespace", "Kestrel")


def test_transactions_handler_applies_each_sample_transaction_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ports = _ports()
    response = _invoke_transactions(_event("kinesis-transactions.json"), ports)
    assert response == {"batchItemFailures": []}
    assert ports.store.applied == Counter({"T-000001": 1, "T-000002": 1, "T-000003": 1})
    assert ports.sink.letters == []
    emf = _emf(capsys.readouterr().out)
    assert (emf["TransactionsApplied"], emf["TransactionsDuplicates"]) == (3, 0)
    assert (emf["TransactionsFailed"], emf["PoisonRecords"]) == (0, 0)


def test_transactions_handler_reports_freshness_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _invoke_transactions(_event("kinesis-transactions.json"), _ports())
    emf = _emf(capsys.readouterr().out)
    # Clock 1795857312.173 s; arrivals .302.173, .307.530, .309.052; events .302.123,
    # .307.480, .309.002.
    assert emf["FreshnessArrivalMax"] == pytest.approx(10_000, abs=0.01)
    assert emf["FreshnessArrivalP50"] == pytest.approx(4_643, abs=0.01)
    assert emf["FreshnessEventTimeMax"] == pytest.approx(10_050, abs=0.01)
    assert emf["FreshnessEventTimeP50"] == pytest.approx(4_693, abs=0.01)


def test_transactions_handler_reports_a_resent_transaction_as_duplicate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-transactions.json")
    resent = copy.deepcopy(event["Records"][0])  # producer retry: same data, new sequence number
    resent["kinesis"]["sequenceNumber"] = str(int(_sequence(event, 2)) + 1)
    resent["eventID"] = f"{SHARD}:{resent['kinesis']['sequenceNumber']}"
    event["Records"].append(resent)
    ports = _ports()
    response = _invoke_transactions(event, ports)
    assert response == {"batchItemFailures": []}
    assert ports.store.applied == Counter({"T-000001": 1, "T-000002": 1, "T-000003": 1})
    emf = _emf(capsys.readouterr().out)
    assert (emf["TransactionsApplied"], emf["TransactionsDuplicates"]) == (3, 1)
    logged = ports.log.writes[0].events
    assert [e["transaction_id"] for e in logged] == ["T-000001", "T-000002", "T-000003", "T-000001"]
    assert logged[3]["features"] == logged[0]["features"]  # a replay sees the same aggregates


def test_transactions_handler_sends_poison_to_sink_and_continues(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-poison.json")
    ports = _ports()
    response = _invoke_transactions(event, ports)
    assert response == {"batchItemFailures": []}
    assert ports.store.applied == Counter({"T-000004": 1})
    poison = event["Records"][1]
    assert ports.sink.letters == [
        DeadLetter(
            reason="undecodable",
            detail=ports.sink.letters[0].detail,
            payload_b64=poison["kinesis"]["data"],
            stream_arn=TRANSACTIONS_ARN,
            shard_id=SHARD,
            sequence_number=_sequence(event, 1),
            partition_key=poison["kinesis"]["partitionKey"],
            first_seen="2026-11-28T09:16:41.912Z",
        )
    ]
    assert "UTF-8" in ports.sink.letters[0].detail
    assert [e["transaction_id"] for e in ports.log.writes[0].events] == ["T-000004"]
    emf = _emf(capsys.readouterr().out)
    assert (emf["PoisonRecords"], emf["TransactionsFailed"]) == (1, 0)


def test_transactions_handler_dead_letters_an_invalid_transaction() -> None:
    event = _event("kinesis-transactions.json")
    _set_data(event["Records"][1], {**_doc(event["Records"][1]), "amount": -3})
    ports = _ports()
    response = _invoke_transactions(event, ports)
    assert response == {"batchItemFailures": []}
    assert [(x.reason, x.sequence_number) for x in ports.sink.letters] == [
        ("invalid_field", _sequence(event, 1))
    ]
    assert ports.sink.letters[0].detail.startswith("amount:")
    assert ports.sink.letters[0].payload_b64 == event["Records"][1]["kinesis"]["data"]
    assert ports.store.applied == Counter({"T-000001": 1, "T-000003": 1})


def test_transactions_handler_reports_a_store_error_with_its_sequence_number(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-transactions.json")
    ports = _ports(store=MemoryFeatureStore(fail_on=["T-000002"]))
    response = _invoke_transactions(event, ports)
    assert response == _failures(event, 1)
    assert ports.store.applied == Counter({"T-000001": 1, "T-000003": 1})
    # The failed record is retried, so it is not logged now.
    assert [e["transaction_id"] for e in ports.log.writes[0].events] == ["T-000001", "T-000003"]
    emf = _emf(capsys.readouterr().out)
    assert (emf["TransactionsApplied"], emf["TransactionsFailed"]) == (2, 1)


def test_transactions_handler_reports_every_record_when_every_item_fails() -> None:
    event = _event("kinesis-transactions.json")
    ports = _ports(store=MemoryFeatureStore(fail_on=["T-000001", "T-000002", "T-000003"]))
    response = _invoke_transactions(event, ports)
    assert response == _failures(event, 0, 1, 2)
    assert ports.log.writes == []


def test_transactions_handler_raises_when_the_whole_store_fails() -> None:
    ports = _ports(store=MemoryFeatureStore(down=True))
    with (
        pytest.raises(ConnectionError, match="unreachable"),
        pytest.warns(UserWarning, match="No application metrics"),
    ):
        _invoke_transactions(_event("kinesis-transactions.json"), ports)
    assert ports.log.writes == []


def test_transactions_handler_raises_when_the_event_log_fails() -> None:
    ports = _ports(log=MemoryEventLog(broken=True))
    with (
        pytest.raises(OSError, match="bucket unavailable"),
        pytest.warns(UserWarning, match="No application metrics"),
    ):
        _invoke_transactions(_event("kinesis-transactions.json"), ports)


def test_transactions_handler_reports_poison_as_failure_when_sink_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event = _event("kinesis-poison.json")
    ports = _ports(sink=MemorySink(broken=True))
    response = _invoke_transactions(event, ports)
    assert response == _failures(event, 1)
    assert ports.store.applied == Counter({"T-000004": 1})
    emf = _emf(capsys.readouterr().out)
    assert (emf["PoisonRecords"], emf["TransactionsFailed"]) == (0, 1)


def test_transactions_handler_logs_the_batch_once_with_features() -> None:
    event = _event("kinesis-transactions.json")
    ports = _ports()
    _invoke_transactions(event, ports)
    assert len(ports.log.writes) == 1
    write = ports.log.writes[0]
    assert (write.kind, write.time_field) == ("transactions", "event_time")
    assert write.batch_id == f"{SHARD}-{_sequence(event, 0)}-{_sequence(event, 2)}"
    assert write.events[0] == {
        "transaction_id": "T-000001",
        "customer_id": "C-000042",
        "terminal_id": "TERM-0007",
        "amount": 57.19,
        "event_time": 1_795_857_302_123,
        "channel": None,
        "device_id": None,
        "features": write.events[0]["features"],
        "feature_set_hash": FEATURE_SET_HASH,
        "score": ports.decisions.published[0].score,
        "decision": ports.decisions.published[0].decision.value,
        "model_version": shipped_scorer().model_version,
        "event_id": event["Records"][0]["eventID"],
    }
    assert [d.transaction_id for d in ports.decisions.published] == [
        e["transaction_id"] for e in write.events
    ]
    assert all(e["feature_set_hash"] == FEATURE_SET_HASH for e in write.events)
    second = dict(zip(FEATURE_NAMES, write.events[1]["features"], strict=True))
    assert second["TX_AMOUNT"] == 12.5
    assert second["TX_DURING_WEEKEND"] == 1.0  # 2026-11-28 is a Saturday
    assert second["TX_DURING_NIGHT"] == 0.0  # 09:15 UTC
    assert second["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2.0  # C-000042: T-000001 and this one
    assert second["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx((57.19 + 12.5) / 2)
    assert second["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == pytest.approx(5.357)
    assert second["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1.0  # the store's first on TERM-0011
    first = dict(zip(FEATURE_NAMES, write.events[0]["features"], strict=True))
    assert first["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == NO_PREVIOUS_S


def test_transactions_handler_defaults_to_the_client_factory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = _ports()
    monkeypatch.setattr(clients, "transaction_path", lambda: _transaction_path(ports))
    response = TRANSACTIONS.lambda_handler(_event("kinesis-poison.json"), FakeContext())
    assert response == {"batchItemFailures": []}
    assert ports.store.applied == Counter({"T-000004": 1})
    assert [letter.reason for letter in ports.sink.letters] == ["undecodable"]
