"""Unit tests for kestrel.serving: entity features, stored decisions and health."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis.exceptions
from serving_doubles import (
    EMPTY_C,
    KNOWN,
    NOW,
    MemoryReader,
    Registry,
    service,
    tx,
)
from stream_doubles import MemoryDecisions, shipped_scorer

from kestrel.decisions import DecisionRecord
from kestrel.features import (
    FEATURE_NAMES,
    NO_PREVIOUS_S,
    TERMINAL_WINDOWS,
    CustomerAggregates,
    TerminalAggregates,
)
from kestrel.serving import (
    CUSTOMER_FEATURES,
    HEALTH_MAX_AGE_S,
    TERMINAL_FEATURES,
    EntityFeatures,
    ScoringService,
    StoreUnavailable,
)

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
    reader, registry, clock = MemoryReader(), Registry(), [0.0]
    svc = service(reader, shipped_scorer(), registry=registry.check, monotonic=lambda: clock[0])
    reader.down = redis.exceptions.ConnectionError("Connection refused")
    health = svc.health()
    assert health["status"] == "degraded"
    assert health["checks"]["redis"]["ok"] is False
    assert "ConnectionError" in health["checks"]["redis"]["detail"]
    assert health["checks"]["model"]["ok"] is True
    assert health["checks"]["schema_registry"] == {"ok": True}

    reader.down = None
    registry.error = PermissionError("AccessDeniedException: glue:GetRegistry")
    clock[0] += HEALTH_MAX_AGE_S  # the last answer is a second old: checked again
    health = svc.health()
    assert health["status"] == "degraded"
    assert health["checks"]["redis"]["ok"] is True
    assert health["checks"]["schema_registry"] == {
        "ok": False,
        "detail": "PermissionError: AccessDeniedException: glue:GetRegistry",
    }


def test_scoring_service_health_is_checked_at_most_once_a_second() -> None:
    reader, registry, clock = MemoryReader(), Registry(), [0.0]
    svc = service(reader, shipped_scorer(), registry=registry.check, monotonic=lambda: clock[0])
    first = svc.health()
    for step in range(100):  # a flood within the second
        clock[0] = step * 0.0099
        assert svc.health() == first
    assert reader.calls == Counter({"ping": 1}) and registry.checks == 1
    first["status"] = "changed by a caller"  # each caller gets its own copy
    assert svc.health()["status"] == "ok"
    clock[0] = HEALTH_MAX_AGE_S
    reader.down = redis.exceptions.ConnectionError("Connection refused")
    assert svc.health()["status"] == "degraded"
    assert reader.calls == Counter({"ping": 2}) and registry.checks == 2


def test_scoring_service_health_flood_from_threads_costs_one_check() -> None:
    reader, gate = MemoryReader(), threading.Event()
    calls = Counter[str]()

    def slow_registry() -> None:
        calls["registry"] += 1
        gate.wait(5)  # every other thread arrives while this check runs

    svc = service(reader, shipped_scorer(), registry=slow_registry)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = [pool.submit(svc.health) for _ in range(64)]
        time.sleep(0.2)
        gate.set()
        statuses = {future.result(timeout=10)["status"] for future in answers}
    assert statuses == {"ok"}
    assert calls["registry"] == 1 and reader.calls == Counter({"ping": 1})


def test_scoring_service_health_logs_a_degraded_check_once_per_refresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader, clock = MemoryReader(), [0.0]
    svc = service(reader, shipped_scorer(), monotonic=lambda: clock[0])
    reader.down = redis.exceptions.ConnectionError("Error 111 connecting to cache.internal:6379")
    with caplog.at_level(logging.WARNING, logger="kestrel.serving"):
        for _ in range(10):
            svc.health()
    degraded = [r.getMessage() for r in caplog.records if "health degraded" in r.getMessage()]
    assert len(degraded) == 1 and "cache.internal:6379" in degraded[0]
