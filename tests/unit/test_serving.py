"""Unit tests for kestrel.serving: scoring, entity features, health and the circuit breaker.

The feature store is an in-memory `FeatureReader` double (no Redis). The breaker is a real
`pybreaker.CircuitBreaker`; its clock is its storage's `opened_at`, which the tests move back
instead of sleeping (one test also checks the real `make_breaker` recovers in real time).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pybreaker
import pytest
import redis.exceptions
from stream_doubles import MemoryDecisions, shipped_scorer

from kestrel.adapters.onnx_model import LayerModelSource
from kestrel.decisions import DecisionRecord, Degraded, ReasonCode, Rules
from kestrel.events import Transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
    FEATURE_NAMES,
    NO_PREVIOUS_S,
    TERMINAL_WINDOWS,
    CustomerAggregates,
    TerminalAggregates,
    TransactionPreview,
    feature_vector,
)
from kestrel.ports import Model
from kestrel.scoring import Decision, Scorer
from kestrel.serving import (
    CUSTOMER_FEATURES,
    TERMINAL_FEATURES,
    EntityFeatures,
    ScoringService,
    StoreUnavailable,
    make_breaker,
)
from kestrel.settings import Settings, default_model_dir

RULES = Rules(review_amount=150.0, night_review_amount=100.0, decline_amount=220.0)
T0 = 1_795_857_302_123  # 2026-11-28T09:15:02.123Z (daytime)
NOW = 1_795_900_000_000
FAIL_MAX = 3

CUSTOMER = CustomerAggregates(
    (3, 10, 40, 1, 2), (15_000, 52_000, 210_000, 5_719, 9_000), T0 - 60_000
)
TERMINAL = TerminalAggregates((30, 200, 800), (0, 4, 8))
KNOWN = TransactionPreview(CUSTOMER, TERMINAL, customer_known=True, terminal_known=True)
UNKNOWN_CUSTOMER = TransactionPreview(
    CustomerAggregates((1,) * 5, (9_000,) * 5, None), TERMINAL, False, True
)
UNKNOWN_BOTH = TransactionPreview(
    CustomerAggregates((1,) * 5, (98_000,) * 5, None),
    TerminalAggregates((0, 0, 0), (0, 0, 0)),
    False,
    False,
)
EMPTY_C = CustomerAggregates((0,) * len(CUSTOMER_WINDOWS), (0,) * len(CUSTOMER_WINDOWS), None)


def tx(tx_id: str, amount: float, at_ms: int = T0) -> Transaction:
    return Transaction(tx_id, f"C-{tx_id}", f"TERM-{tx_id}", amount, at_ms)


# --- doubles -----------------------------------------------------------------------------------


class MemoryReader:
    """FeatureReader double: previews by transaction id, aggregates by entity id; counts calls.

    While `down` holds an exception, every call raises it (a store outage). A preview that is
    an exception comes back in its transaction's place (a per-transaction failure).
    """

    def __init__(
        self,
        previews: dict[str, TransactionPreview | Exception] | None = None,
        customers: dict[str, tuple[CustomerAggregates, bool]] | None = None,
        terminals: dict[str, tuple[TerminalAggregates, bool]] | None = None,
    ) -> None:
        self.previews = previews or {}
        self.customers = customers or {}
        self.terminals = terminals or {}
        self.down: BaseException | None = None
        self.delay_s = 0.0
        self.calls: Counter[str] = Counter()
        self.seen: list[Any] = []

    def _call(self, name: str, *args: Any) -> None:
        self.calls[name] += 1
        self.seen.append((name, *args))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.down is not None:
            raise self.down

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def preview_transactions(
        self, transactions: Sequence[Transaction]
    ) -> list[TransactionPreview | Exception]:
        self._call("preview_transactions", list(transactions))
        return [self.previews.get(t.transaction_id, KNOWN) for t in transactions]

    def customer_aggregates(
        self, customer_id: str, as_of_ms: int
    ) -> tuple[CustomerAggregates, bool]:
        self._call("customer_aggregates", customer_id, as_of_ms)
        return self.customers[customer_id]

    def terminal_aggregates(
        self, terminal_id: str, as_of_ms: int
    ) -> tuple[TerminalAggregates, bool]:
        self._call("terminal_aggregates", terminal_id, as_of_ms)
        return self.terminals[terminal_id]

    def ping(self) -> None:
        self._call("ping")


class RecordingModel:
    """Wraps the shipped ONNX model and records every batch it scores."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner
        self.batches: list[npt.NDArray[np.float32]] = []

    @property
    def manifest(self) -> Any:
        return self.inner.manifest

    def predict_proba(self, rows: Any) -> Any:
        self.batches.append(np.array(rows, copy=True))
        return self.inner.predict_proba(rows)


class RecordingSource:
    def __init__(self) -> None:
        self.model = RecordingModel(LayerModelSource(default_model_dir()).load())

    def load(self) -> RecordingModel:
        return self.model

    def poll(self) -> RecordingModel | None:
        return None


class NoModelSource:
    """A model source with nothing to load (no layer, no registry)."""

    def load(self) -> Model:
        raise FileNotFoundError("manifest.json: no such file")

    def poll(self) -> Model | None:
        return None


class Registry:
    def __init__(self) -> None:
        self.error: Exception | None = None
        self.checks = 0

    def check(self) -> None:
        self.checks += 1
        if self.error is not None:
            raise self.error


def breaker(
    reset_s: float = 60.0,
) -> tuple[pybreaker.CircuitBreaker, pybreaker.CircuitMemoryStorage]:
    """A breaker like `make_breaker`'s, with its storage at hand to move its clock."""
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    cb = pybreaker.CircuitBreaker(
        fail_max=FAIL_MAX, reset_timeout=reset_s, state_storage=storage, name="redis"
    )
    return cb, storage


def elapse(storage: pybreaker.CircuitMemoryStorage, seconds: float) -> None:
    """Make the breaker's open period `seconds` older (its reset timeout counts from there)."""
    opened = storage.opened_at
    assert opened is not None, "the breaker never opened"
    storage.opened_at = opened - timedelta(seconds=seconds)


def service(
    reader: MemoryReader,
    scorer: Scorer | None = None,
    cb: pybreaker.CircuitBreaker | None = None,
    decisions: MemoryDecisions | None = None,
    registry: Callable[[], Any] | None = None,
) -> ScoringService:
    return ScoringService(
        reader=reader,
        scorer=scorer,
        decisions=decisions or MemoryDecisions(),
        rules=RULES,
        breaker=cb or breaker()[0],
        registry_check=registry or (lambda: None),
        clock_ms=lambda: NOW,
    )


def expected_vector(t: Transaction, preview: TransactionPreview) -> tuple[float, ...]:
    return feature_vector(t.amount, t.event_time_ms, preview.customer, preview.terminal)


def assert_rules_only(
    records: Sequence[DecisionRecord], txs: Sequence[Transaction], why: Degraded
) -> None:
    assert [r.transaction_id for r in records] == [t.transaction_id for t in txs]
    for record, t in zip(records, txs, strict=True):
        decision, reasons = RULES.decide(t)
        assert record.score is None and record.model_version is None
        assert (record.decision, record.reasons) == (decision, reasons)
        assert record.degraded == (why,)
        assert record.source == "api"


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


# --- entity features and decisions -------------------------------------------------------------


def test_scoring_service_customer_features_are_the_customer_features_now() -> None:
    aggregates = CustomerAggregates(
        (2, 5, 8, 1, 2), (10_000, 30_000, 64_000, 2_500, 10_000), NOW - 90_000
    )
    reader = MemoryReader(customers={"C-1": (aggregates, True), "C-new": (EMPTY_C, False)})
    svc = service(reader, shipped_scorer())
    found = svc.customer_features("C-1")
    assert reader.seen == [("customer_aggregates", "C-1", NOW)]
    assert isinstance(found, EntityFeatures)
    assert (found.entity_id, found.as_of_ms, found.known) == ("C-1", NOW, True)
    assert tuple(found.features) == CUSTOMER_FEATURES
    assert all(name.startswith("CUSTOMER_ID_") for name in found.features)
    assert "CUSTOMER_ID_AMOUNT_OVER_30DAY_AVG" not in found.features  # needs a transaction
    assert found.features == {
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW": 2.0,
        "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW": 50.0,
        "CUSTOMER_ID_NB_TX_7DAY_WINDOW": 5.0,
        "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW": 60.0,
        "CUSTOMER_ID_NB_TX_30DAY_WINDOW": 8.0,
        "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW": 80.0,
        "CUSTOMER_ID_NB_TX_10MIN_WINDOW": 1.0,
        "CUSTOMER_ID_SUM_AMOUNT_10MIN_WINDOW": 25.0,
        "CUSTOMER_ID_NB_TX_1HOUR_WINDOW": 2.0,
        "CUSTOMER_ID_SUM_AMOUNT_1HOUR_WINDOW": 100.0,
        "CUSTOMER_ID_SECONDS_SINCE_PREV_TX": 90.0,
    }
    unknown = svc.customer_features("C-new")
    assert unknown.known is False
    assert unknown.features["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 0.0
    assert unknown.features["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == NO_PREVIOUS_S


def test_scoring_service_terminal_features_are_the_terminal_features_now() -> None:
    aggregates = TerminalAggregates((4, 20, 50), (1, 5, 5))
    empty = TerminalAggregates((0,) * len(TERMINAL_WINDOWS), (0,) * len(TERMINAL_WINDOWS))
    reader = MemoryReader(terminals={"TERM-1": (aggregates, True), "TERM-new": (empty, False)})
    svc = service(reader, shipped_scorer())
    found = svc.terminal_features("TERM-1")
    assert reader.seen == [("terminal_aggregates", "TERM-1", NOW)]
    assert (found.entity_id, found.as_of_ms, found.known) == ("TERM-1", NOW, True)
    assert tuple(found.features) == TERMINAL_FEATURES
    assert set(TERMINAL_FEATURES) == {n for n in FEATURE_NAMES if n.startswith("TERMINAL_ID_")}
    assert found.features == {
        "TERMINAL_ID_NB_TX_1DAY_WINDOW": 4.0,
        "TERMINAL_ID_RISK_1DAY_WINDOW": 0.25,
        "TERMINAL_ID_NB_TX_7DAY_WINDOW": 20.0,
        "TERMINAL_ID_RISK_7DAY_WINDOW": 0.25,
        "TERMINAL_ID_NB_TX_30DAY_WINDOW": 50.0,
        "TERMINAL_ID_RISK_30DAY_WINDOW": 0.1,
    }
    unknown = svc.terminal_features("TERM-new")
    assert unknown.known is False
    assert set(unknown.features.values()) == {0.0}


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.customer_features("C-1"),
        lambda s: s.terminal_features("TERM-1"),
        lambda s: s.decision("T-1"),
    ],
    ids=["customer", "terminal", "decision"],
)
def test_scoring_service_entity_reads_raise_store_unavailable_when_the_store_fails(
    call: Callable[[ScoringService], object],
) -> None:
    class DownDecisions(MemoryDecisions):
        def decision(self, transaction_id: str) -> DecisionRecord | None:
            raise redis.exceptions.ConnectionError("Connection refused")

    reader = MemoryReader()
    reader.down = redis.exceptions.ConnectionError("Connection refused")
    svc = service(reader, shipped_scorer(), decisions=DownDecisions())
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        call(svc)


def test_scoring_service_decision_reads_the_stored_decision_or_none() -> None:
    decisions = MemoryDecisions()
    stored = service(MemoryReader({"a": KNOWN}), shipped_scorer()).score([tx("a", 57.19)])
    decisions.publish(stored)
    svc = service(MemoryReader(), shipped_scorer(), decisions=decisions)
    assert svc.decision("a") == stored[0]
    assert svc.decision("missing") is None


# --- health ------------------------------------------------------------------------------------


def test_scoring_service_health_is_ok_when_every_check_passes() -> None:
    reader, registry = MemoryReader(), Registry()
    svc = service(reader, shipped_scorer(), registry=registry.check)
    health = svc.health()
    assert health["status"] == "ok"
    checks = health["checks"]
    assert set(checks) == {"redis", "model", "schema_registry"}
    assert checks["redis"]["ok"] is True and checks["redis"]["breaker"] == "closed"
    assert checks["redis"]["latency_ms"] >= 0
    assert checks["model"] == {"ok": True, "version": shipped_scorer().model_version}
    assert checks["schema_registry"] == {"ok": True}
    assert reader.calls == Counter({"ping": 1}) and registry.checks == 1


def test_scoring_service_health_reports_each_failing_check_and_degraded() -> None:
    reader, registry = MemoryReader(), Registry()
    svc = service(reader, shipped_scorer(), registry=registry.check)
    reader.down = redis.exceptions.ConnectionError("Connection refused")
    health = svc.health()
    assert health["status"] == "degraded"
    assert health["checks"]["redis"]["ok"] is False
    assert "ConnectionError" in health["checks"]["redis"]["detail"]
    assert health["checks"]["model"]["ok"] is True
    assert health["checks"]["schema_registry"] == {"ok": True}

    reader.down = None
    registry.error = PermissionError("AccessDeniedException: glue:GetRegistry")
    health = svc.health()
    assert health["status"] == "degraded"
    assert health["checks"]["redis"]["ok"] is True
    assert health["checks"]["schema_registry"] == {
        "ok": False,
        "detail": "PermissionError: AccessDeniedException: glue:GetRegistry",
    }
