"""The stream handlers when the schema registry cannot answer: retry from there, log once."""

from __future__ import annotations

import base64
import copy
import logging
from collections import Counter
from typing import Any

import pytest
from glue_doubles import LABEL, V2, CountingGlue, client_error
from handler_doubles import (
    LABELS,
    NOW_S,
    TRANSACTIONS,
    FakeContext,
    _doc,
    _emf,
    _event,
    _failures,
    _ports,
    _set_data,
)
from stream_doubles import shipped_scorer

from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.codec import encode, label_decoder, schema_definition, transaction_decoder
from kestrel.streaming import LabelPath, TransactionPath

DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/kestrel-LabelsRole/fn is not authorized to "
    "perform: glue:GetSchemaVersion on resource: "
    "arn:aws:glue:us-east-1:123456789012:registry/kestrel because no identity-based policy "
    "allows the glue:GetSchemaVersion action"
)


@pytest.fixture(autouse=True)
def _metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The namespace template.yaml sets (the handlers' Metrics read it at import time)."""
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Kestrel")
    for module in (TRANSACTIONS, LABELS):
        monkeypatch.setattr(module.metrics.provider, "namespace", "Kestrel")


def _grow(event: dict[str, Any], count: int) -> dict[str, Any]:
    """`event` with `count` records, copies of its first with rising sequence numbers."""
    first = event["Records"][0]
    base = int(first["kinesis"]["sequenceNumber"])
    shard = first["eventID"].split(":", 1)[0]
    records = []
    for n in range(count):
        record = copy.deepcopy(first)
        record["kinesis"]["sequenceNumber"] = str(base + n)
        record["eventID"] = f"{shard}:{base + n}"
        records.append(record)
    return {**event, "Records": records}


def _set_frame(record: dict[str, Any], frame: bytes) -> None:
    record["kinesis"]["data"] = base64.b64encode(frame).decode()


def _streaming_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kestrel.record_decoding"]


def test_transactions_handler_retries_from_a_throttled_lookup_and_logs_it_once(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = _event("kinesis-transactions.json")
    doc = _doc(sample["Records"][0])  # T-000001
    event = _grow(sample, 52)
    records = event["Records"]
    _set_data(records[0], {**doc, "transaction_id": "T-BAD", "amount": -3})
    for n, record in enumerate(records[2:], start=2):  # 50 frames of a version not cached
        _set_frame(
            record,
            encode({**doc, "transaction_id": f"T-{n}"}, schema_definition("transaction.v2"), V2),
        )
    glue = CountingGlue()
    glue.fail = client_error("ThrottlingException", "Rate exceeded")
    ports = _ports()
    path = TransactionPath(
        transaction_decoder(GlueSchemaRegistry(glue.api, "kestrel")),
        ports.store,
        ports.sink,
        ports.log,
        shipped_scorer(),
        [ports.decisions],
        lambda: NOW_S,
    )
    caplog.set_level(logging.WARNING)

    response = TRANSACTIONS.lambda_handler(event, FakeContext(), path=path)

    assert response == _failures(event, *range(2, 52))
    assert len(glue.calls) == 1  # not once per record
    assert [letter.sequence_number for letter in ports.sink.letters] == [
        records[0]["kinesis"]["sequenceNumber"]  # poison before the failure is still parked
    ]
    assert ports.store.applied == Counter({"T-000001": 1})
    (logged,) = _streaming_logs(caplog)
    assert logged.levelno == logging.WARNING
    assert logged.getMessage().startswith(
        "schema registry throttled: 50 records to retry from sequence number "
        f"{records[2]['kinesis']['sequenceNumber']}: ThrottlingException on GetSchemaVersion"
    )
    # Two lines for the whole batch: the registry's, and the handler's summary of retries.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [logged.getMessage(), "records to retry"]
    assert _emf(capsys.readouterr().out)["TransactionsFailed"] == 50

    glue.fail = None  # the registry answers again: the retried records go through
    retry = {**event, "Records": records[2:]}
    assert TRANSACTIONS.lambda_handler(retry, FakeContext(), path=path) == {"batchItemFailures": []}
    assert len(ports.store.applied) == 51
    assert len(glue.calls) == 2


def test_labels_handler_logs_the_missing_permission_once_and_retries_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    event = _grow(_event("kinesis-labels.json"), 4)
    doc = _doc(event["Records"][0])
    for record in event["Records"][1:]:
        _set_frame(record, encode(doc, schema_definition("label.v1"), LABEL))
    glue = CountingGlue()
    glue.fail = client_error("AccessDeniedException", DENIED)
    ports = _ports()
    path = LabelPath(
        label_decoder(GlueSchemaRegistry(glue.api, "kestrel")), ports.store, ports.sink, ports.log
    )
    caplog.set_level(logging.WARNING, logger="kestrel.record_decoding")

    response = LABELS.lambda_handler(
        event, FakeContext(function_name="kestrel-LabelsFunction"), path=path
    )

    assert response == _failures(event, 1, 2, 3)
    assert len(glue.calls) == 1
    assert ports.sink.letters == []
    (logged,) = _streaming_logs(caplog)
    assert logged.levelno == logging.ERROR
    assert (
        "schema registry access_denied: 3 records to retry from sequence number "
        in logged.getMessage()
    )
    assert (
        "missing permission glue:GetSchemaVersion on "
        "arn:aws:glue:us-east-1:123456789012:registry/kestrel" in logged.getMessage()
    )
