"""Unit tests for kestrel.serving: scoring and the circuit breaker.

The feature store is an in-memory `FeatureReader` double (no Redis). The breaker is a real
`pybreaker.CircuitBreaker`; its clock is its storage's `opened_at`, which the tests move back
instead of sleeping (one test also checks the real `make_breaker` recovers in real time).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import pybreaker
import pytest
import redis.exceptions
from serving_doubles import (
    FAIL_MAX,
    KNOWN,
    T0,
    UNKNOWN_BOTH,
    UNKNOWN_CUSTOMER,
    MemoryReader,
    NoModelSource,
    RecordingModel,
    RecordingSource,
    assert_rules_only,
    breaker,
    elapse,
    expected_vector,
    service,
    tx,
)
from stream_doubles import shipped_scorer

from kestrel.adapters.onnx_model import LayerModelSource
from kestrel.decisions import Degraded, ReasonCode
from kestrel.features import (
    TransactionPreview,
)
from kestrel.scoring import Decision, Scorer
from kestrel.serving import (
    StoreUnavailable,
    make_breaker,
)
from kestrel.settings import Settings, default_model_dir

# --- scoring -----------------------------------------------------------------------------------


def test_scoring_service_scores_with_the_model_on_the_previews_feature_vectors() -> None:
    source = RecordingSource()
    scorer = Scorer(source)
    previews = {"a": KNOWN, "b": UNKNOWN_CUSTOMER, "c": UNKNOWN_BOTH}
    reader = MemoryReader(dict(previews))
    txs = [tx("a", 57.19), tx("b", 980.0, T0 - 7 * 3_600_000), tx("c", 312.4)]
    records = service(reader, scorer).score(txs)

    assert reader.calls == Counter({"preview_transactions": 1})
    assert reader.seen == [("preview_transactions", txs)]
    vectors = [expected_vector(t, previews[t.transaction_id]) for t in txs]
    (batch,) = source.model.batches
    np.testing.assert_array_equal(batch, np.asarray(vectors, dtype=np.float32))
    expected = shipped_scorer().score(vectors)
    assert [r.transaction_id for r in records] == ["a", "b", "c"]
    assert [r.score for r in records] == [e.score for e in expected]
    assert [r.decision for r in records] == [e.decision for e in expected]
    assert {r.model_version for r in records} == {scorer.model_version}
    assert [r.cold_start for r in records] == [(), ("customer",), ("customer", "terminal")]
    assert all(r.degraded == () and r.source == "api" for r in records)
    for record, row in zip(records, vectors, strict=True):
        assert record.reasons == tuple(
            ReasonCode("feature", r.feature, r.value, r.reference_median, r.deviation)
            for r in scorer.reasons(row)
        )


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionError("Connection refused"),
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6399"),
        OSError("network unreachable"),
    ],
    ids=["ConnectionError", "redis.ConnectionError", "OSError"],
)
def test_scoring_service_decides_by_rules_when_the_store_fails(failure: Exception) -> None:
    reader = MemoryReader()
    reader.down = failure
    txs = [tx("a", 10.0), tx("b", 150.0), tx("c", 230.0), tx("d", 120.0, T0 - 8 * 3_600_000)]
    records = service(reader, shipped_scorer()).score(txs)  # never raises
    assert reader.calls["preview_transactions"] == 1
    assert_rules_only(records, txs, Degraded.FEATURE_STORE_UNAVAILABLE)
    assert [r.decision for r in records] == [
        Decision.APPROVE,
        Decision.REVIEW,
        Decision.DECLINE,
        Decision.REVIEW,  # 01:15 UTC: the night rule
    ]
    assert all(r.to_dict()["degraded"] is True for r in records)
    assert [r.to_dict()["degraded_reasons"] for r in records] == [["feature_store_unavailable"]] * 4


def test_scoring_service_treats_a_store_slower_than_its_budget_as_unavailable() -> None:
    budget_ms = Settings.from_env({}).redis_budget_ms
    reader = MemoryReader()
    # What the API's Redis client does when a reply misses REDIS_BUDGET_MS: its socket times out.
    reader.delay_s = budget_ms / 1000.0
    reader.down = redis.exceptions.TimeoutError("Timeout reading from socket")
    svc = service(reader, shipped_scorer())
    started = time.perf_counter()
    records = svc.score([tx("a", 230.0)])
    assert time.perf_counter() - started < 1.0
    assert_rules_only(records, [tx("a", 230.0)], Degraded.FEATURE_STORE_UNAVAILABLE)
    assert svc.breaker_state == "closed"  # one slow call does not open it


def test_scoring_service_opens_the_breaker_after_fail_max_failures_and_stops_calling() -> None:
    reader = MemoryReader()
    reader.down = ConnectionError("Connection refused")
    cb, _ = breaker()
    svc = service(reader, shipped_scorer(), cb)
    for n in range(1, FAIL_MAX):
        svc.score([tx("a", 10.0)])
        assert reader.total_calls == n
        assert svc.breaker_state == "closed"
    svc.score([tx("a", 10.0)])
    assert reader.total_calls == FAIL_MAX
    assert svc.breaker_state == "open"

    reader.down = None  # the store is back, but the breaker is open: it is not asked
    txs = [tx("b", 230.0), tx("c", 5.0)]
    for _ in range(5):
        assert_rules_only(svc.score(txs), txs, Degraded.FEATURE_STORE_UNAVAILABLE)
    with pytest.raises(StoreUnavailable, match="circuit breaker is open"):
        svc.customer_features("C-1")
    with pytest.raises(StoreUnavailable, match="circuit breaker is open"):
        svc.terminal_features("TERM-1")
    with pytest.raises(StoreUnavailable, match="circuit breaker is open"):
        svc.decision("T-1")
    health = svc.health()
    assert health["status"] == "degraded"
    assert health["checks"]["redis"]["ok"] is False
    assert health["checks"]["redis"]["breaker"] == "open"
    assert reader.total_calls == FAIL_MAX


def test_scoring_service_half_opens_after_the_reset_timeout_and_one_success_closes() -> None:
    reader = MemoryReader()
    reader.down = ConnectionError("Connection refused")
    cb, storage = breaker(reset_s=30.0)
    svc = service(reader, shipped_scorer(), cb)
    for _ in range(FAIL_MAX):
        svc.score([tx("a", 10.0)])
    assert svc.breaker_state == "open"
    reader.down = None

    elapse(storage, 29.0)  # not yet
    assert svc.score([tx("a", 10.0)])[0].degraded == (Degraded.FEATURE_STORE_UNAVAILABLE,)
    assert reader.total_calls == FAIL_MAX

    elapse(storage, 1.5)  # past the reset timeout: one trial call goes through
    (record,) = svc.score([tx("a", 10.0)])
    assert reader.total_calls == FAIL_MAX + 1
    assert record.degraded == () and record.score is not None
    assert svc.breaker_state == "closed"
    assert cb.fail_counter == 0
    for n in range(2, 5):  # closed: every call reaches the store again
        assert svc.score([tx("a", 10.0)])[0].degraded == ()
        assert reader.total_calls == FAIL_MAX + n


def test_scoring_service_reopens_the_breaker_when_the_trial_call_fails() -> None:
    reader = MemoryReader()
    reader.down = redis.exceptions.TimeoutError("Timeout connecting to server")
    cb, storage = breaker(reset_s=30.0)
    svc = service(reader, shipped_scorer(), cb)
    for _ in range(FAIL_MAX):
        svc.score([tx("a", 10.0)])
    elapse(storage, 31.0)
    (record,) = svc.score([tx("a", 10.0)])  # the trial: it fails, the breaker opens again
    assert record.degraded == (Degraded.FEATURE_STORE_UNAVAILABLE,)
    assert reader.total_calls == FAIL_MAX + 1
    assert svc.breaker_state == "open"
    svc.score([tx("a", 10.0)])
    assert reader.total_calls == FAIL_MAX + 1  # a fresh open period: not asked again


def test_make_breaker_does_not_count_bad_input_as_a_store_failure() -> None:
    cb = make_breaker(fail_max=1, reset_s=60)

    def overflow() -> None:
        raise OverflowError("cannot convert float infinity to integer")

    with pytest.raises(OverflowError):
        cb.call(overflow)
    assert (cb.current_state, cb.fail_counter) == ("closed", 0)
    with pytest.raises(pybreaker.CircuitBreakerError):
        cb.call(lambda: (_ for _ in ()).throw(ConnectionError("refused")))
    assert cb.current_state == "open"


def test_make_breaker_opens_after_fail_max_and_recovers_after_reset_in_real_time() -> None:
    cb = make_breaker(fail_max=2, reset_s=0.05)
    assert (cb.fail_max, cb.reset_timeout, cb.name) == (2, 0.05, "redis")
    reader = MemoryReader()
    reader.down = ConnectionError("Connection refused")
    svc = service(reader, shipped_scorer(), cb)
    svc.score([tx("a", 1.0)])
    assert svc.breaker_state == "closed"
    svc.score([tx("a", 1.0)])
    assert svc.breaker_state == "open"
    svc.score([tx("a", 1.0)])
    assert reader.total_calls == 2
    reader.down = None
    time.sleep(0.06)
    assert svc.score([tx("a", 1.0)])[0].degraded == ()
    assert svc.breaker_state == "closed" and reader.total_calls == 3


def test_scoring_service_degrades_only_the_transaction_whose_preview_failed() -> None:
    previews: dict[str, TransactionPreview | Exception] = {
        "a": KNOWN,
        "b": redis.exceptions.ResponseError("script error for one key"),
        "c": UNKNOWN_CUSTOMER,
    }
    reader = MemoryReader(previews)
    txs = [tx("a", 57.19), tx("b", 230.0), tx("c", 312.4)]
    cb, _ = breaker()
    svc = service(reader, shipped_scorer(), cb)
    records = svc.score(txs)
    assert [r.transaction_id for r in records] == ["a", "b", "c"]
    assert_rules_only(records[1:2], txs[1:2], Degraded.FEATURE_STORE_UNAVAILABLE)
    assert records[1].decision is Decision.DECLINE
    expected = shipped_scorer().score(
        [expected_vector(txs[0], KNOWN), expected_vector(txs[2], UNKNOWN_CUSTOMER)]
    )
    assert [records[0].score, records[2].score] == [e.score for e in expected]
    assert records[0].degraded == () and records[2].degraded == ()
    assert records[2].cold_start == ("customer",)
    assert svc.breaker_state == "closed" and cb.fail_counter == 0


@pytest.mark.parametrize("scorer", [None, Scorer(NoModelSource())], ids=["none", "unloadable"])
def test_scoring_service_without_a_model_decides_by_rules_flagged_no_model(
    scorer: Scorer | None,
) -> None:
    previews: dict[str, TransactionPreview | Exception] = {"a": KNOWN, "b": UNKNOWN_BOTH}
    reader = MemoryReader(previews)
    svc = service(reader, scorer)
    assert svc.model_version is None
    txs = [tx("a", 230.0), tx("b", 12.0)]
    records = svc.score(txs)
    assert reader.calls["preview_transactions"] == 1
    assert_rules_only(records, txs, Degraded.NO_MODEL)
    assert [r.cold_start for r in records] == [(), ("customer", "terminal")]
    assert [r.decision for r in records] == [Decision.DECLINE, Decision.APPROVE]
    health = svc.health()
    assert health["status"] == "degraded"
    assert health["checks"]["model"]["ok"] is False
    assert health["checks"]["model"]["version"] is None
    assert "rules only" in health["checks"]["model"]["detail"]


class FailingModel(RecordingModel):
    """The shipped model, whose runtime fails on every call."""

    def predict_proba(self, rows: Any) -> Any:
        raise RuntimeError("onnxruntime: invalid input")


class FailingSource(RecordingSource):
    def __init__(self) -> None:
        self.model = FailingModel(LayerModelSource(default_model_dir()).load())


def test_scoring_service_decides_by_rules_flagged_model_error_when_the_model_fails() -> None:
    reader = MemoryReader({"a": KNOWN, "b": UNKNOWN_BOTH})
    svc = service(reader, Scorer(FailingSource()))
    assert svc.model_version is not None  # loaded, but its runtime fails
    txs = [tx("a", 230.0), tx("b", 12.0)]
    assert_rules_only(svc.score(txs), txs, Degraded.MODEL_ERROR)


def test_scoring_service_scores_an_empty_batch_as_nothing() -> None:
    assert service(MemoryReader(), shipped_scorer()).score([]) == []
