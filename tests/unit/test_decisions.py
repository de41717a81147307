"""Unit tests for kestrel.decisions: rules, the decision record, model decisions (no network)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from stream_doubles import shipped_scorer

from kestrel.decisions import (
    DecisionRecord,
    Degraded,
    ReasonCode,
    Rules,
    decide_with_model,
    decide_with_rules,
)
from kestrel.events import Transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
    FEATURE_NAMES,
    FEATURE_SET_HASH,
    TERMINAL_WINDOWS,
    CustomerAggregates,
    TerminalAggregates,
    feature_vector,
)
from kestrel.scoring import Decision, NoModelError, Scorer
from kestrel.settings import default_model_dir

RULES = Rules(review_amount=150.0, night_review_amount=100.0, decline_amount=220.0)
# 2026-11-28 (a Saturday) at 00:00:00.000 UTC.
DAY = int(datetime(2026, 11, 28, tzinfo=UTC).timestamp() * 1000)
NOON = DAY + 12 * 3_600_000


def tx(amount: float, at_ms: int = NOON, tx_id: str = "T-1") -> Transaction:
    """A transaction of `amount` at `at_ms`."""
    return Transaction(tx_id, "C-1", "TERM-1", amount, at_ms)


def at(hour: int, minute: int = 0, second: int = 0, ms: int = 0) -> int:
    """Epoch ms of a time of day on DAY (UTC)."""
    return DAY + ((hour * 60 + minute) * 60 + second) * 1000 + ms


# --- Rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "when", "decision", "rule", "limit"),
    [
        (220.0, NOON, Decision.DECLINE, "amount_at_or_over_decline_limit", 220.0),
        (10_000.0, at(3), Decision.DECLINE, "amount_at_or_over_decline_limit", 220.0),
        (219.99, NOON, Decision.REVIEW, "amount_at_or_over_review_limit", 150.0),
        (150.0, NOON, Decision.REVIEW, "amount_at_or_over_review_limit", 150.0),
        # At night an amount over the day review limit still names the day rule (checked first).
        (150.0, at(2), Decision.REVIEW, "amount_at_or_over_review_limit", 150.0),
        (100.0, at(0), Decision.REVIEW, "night_amount_at_or_over_review_limit", 100.0),
        (100.0, at(6, 59, 59, 999), Decision.REVIEW, "night_amount_at_or_over_review_limit", 100.0),
        (149.99, at(3, 30), Decision.REVIEW, "night_amount_at_or_over_review_limit", 100.0),
    ],
)
def test_rules_decide_at_exactly_the_limits_and_name_the_rule(
    amount: float, when: int, decision: Decision, rule: str, limit: float
) -> None:
    got, reasons = RULES.decide(tx(amount, when))
    assert got is decision
    assert reasons == (ReasonCode("rule", rule, amount, limit),)


@pytest.mark.parametrize(
    ("amount", "when"),
    [
        (149.99, NOON),
        (0.0, NOON),
        (99.99, at(0)),  # night, just under the night limit
        (99.99, at(6, 59, 59, 999)),
        (100.0, at(7)),  # 07:00:00.000 is no longer night
        (149.99, at(23, 59, 59, 999)),  # the last millisecond of the day is not night
        (100.0, DAY - 1),  # 23:59:59.999 of the day before
    ],
)
def test_rules_approve_below_the_limits_with_no_reason(amount: float, when: int) -> None:
    assert RULES.decide(tx(amount, when)) == (Decision.APPROVE, ())


def test_rules_night_window_is_00_00_to_06_59_utc_as_the_night_feature() -> None:
    night_feature = FEATURE_NAMES.index("TX_DURING_NIGHT")
    empty_c = CustomerAggregates((1,) * len(CUSTOMER_WINDOWS), (0,) * len(CUSTOMER_WINDOWS), None)
    empty_t = TerminalAggregates((0,) * len(TERMINAL_WINDOWS), (0,) * len(TERMINAL_WINDOWS))
    for minute_of_day in range(0, 24 * 60, 15):
        when = DAY + minute_of_day * 60_000
        is_night = minute_of_day < 7 * 60
        decision, _ = RULES.decide(tx(120.0, when))
        assert (decision is Decision.REVIEW) == is_night, minute_of_day
        assert feature_vector(120.0, when, empty_c, empty_t)[night_feature] == float(is_night)


def test_decide_with_rules_flags_degradation_and_has_no_score() -> None:
    record = decide_with_rules(
        RULES,
        tx(230.0, tx_id="T-9"),
        (Degraded.FEATURE_STORE_UNAVAILABLE,),
        "api",
        ("terminal",),
    )
    assert record.transaction_id == "T-9"
    assert (record.customer_id, record.terminal_id) == ("C-1", "TERM-1")
    assert record.score is None and record.model_version is None
    assert record.decision is Decision.DECLINE
    assert record.reasons == (ReasonCode("rule", "amount_at_or_over_decline_limit", 230.0, 220.0),)
    assert record.degraded == (Degraded.FEATURE_STORE_UNAVAILABLE,)
    assert record.cold_start == ("terminal",)
    assert record.feature_set_hash == FEATURE_SET_HASH
    assert record.source == "api"
    body = record.to_dict()
    assert body["degraded"] is True
    assert body["degraded_reasons"] == ["feature_store_unavailable"]


# --- DecisionRecord ----------------------------------------------------------------------------


RECORDS = [
    DecisionRecord(
        transaction_id="T-000101",
        customer_id="C-000042",
        terminal_id="TERM-0007",
        score=0.8123,
        decision=Decision.DECLINE,
        model_version="7",
        feature_set_hash=FEATURE_SET_HASH,
        reasons=(
            ReasonCode("feature", "TX_AMOUNT", 512.5, 45.0, 3.25),
            ReasonCode("feature", "TERMINAL_ID_RISK_7DAY_WINDOW", 0.5, 0.0, 1.0),
        ),
        degraded=(),
        cold_start=(),
        decided_at_ms=1_795_857_302_123,
        source="stream",
    ),
    DecisionRecord(
        transaction_id="T-2",
        customer_id="C-2",
        terminal_id="TERM-2",
        score=None,
        decision=Decision.REVIEW,
        model_version=None,
        feature_set_hash=FEATURE_SET_HASH,
        reasons=(ReasonCode("rule", "night_amount_at_or_over_review_limit", 120.0, 100.0),),
        degraded=(Degraded.FEATURE_STORE_UNAVAILABLE, Degraded.NO_MODEL),
        cold_start=("customer", "terminal"),
        decided_at_ms=946_684_800_000,
        source="api",
    ),
    DecisionRecord(
        transaction_id="T-3",
        customer_id="C-3",
        terminal_id="TERM-3",
        score=0.0,
        decision=Decision.APPROVE,
        model_version="1",
        feature_set_hash=FEATURE_SET_HASH,
        reasons=(),
        degraded=(Degraded.NO_MODEL,),
        cold_start=("customer",),
        decided_at_ms=0,
        source="api",
    ),
]


@pytest.mark.parametrize("record", RECORDS, ids=[r.transaction_id for r in RECORDS])
def test_decision_record_round_trips_through_json(record: DecisionRecord) -> None:
    wire = json.loads(json.dumps(record.to_dict(), allow_nan=False))
    assert DecisionRecord.from_dict(wire) == record


def test_decision_record_to_dict_is_the_documented_shape() -> None:
    body = RECORDS[1].to_dict()
    assert body == {
        "transaction_id": "T-2",
        "customer_id": "C-2",
        "terminal_id": "TERM-2",
        "score": None,
        "decision": "REVIEW",
        "model_version": None,
        "feature_set_hash": FEATURE_SET_HASH,
        "reasons": [
            {
                "kind": "rule",
                "name": "night_amount_at_or_over_review_limit",
                "value": 120.0,
                "reference": 100.0,
                "deviation": None,
            }
        ],
        "degraded": True,
        "degraded_reasons": ["feature_store_unavailable", "no_model"],
        "cold_start": {"customer": True, "terminal": True},
        "decided_at": 946_684_800_000,
        "source": "api",
    }
    assert RECORDS[0].to_dict()["degraded"] is False
    assert RECORDS[0].to_dict()["cold_start"] == {"customer": False, "terminal": False}
    assert RECORDS[2].to_dict()["cold_start"] == {"customer": True, "terminal": False}


# --- decide_with_model -------------------------------------------------------------------------


def customer(
    counts: tuple[int, ...], sums: tuple[int, ...], previous: int | None
) -> CustomerAggregates:
    return CustomerAggregates(counts, sums, previous)


CASES: list[tuple[Transaction, CustomerAggregates, TerminalAggregates, tuple[str, ...]]] = [
    (
        tx(57.19, at(9, 15), "T-a"),
        customer((3, 10, 40, 1, 2), (15_000, 52_000, 210_000, 5_719, 9_000), at(8, 50)),
        TerminalAggregates((30, 200, 800), (0, 1, 3)),
        (),
    ),
    (
        tx(980.0, at(2, 5), "T-b"),
        customer((1, 1, 1, 1, 1), (98_000,) * 5, None),
        TerminalAggregates((0, 0, 0), (0, 0, 0)),
        ("customer", "terminal"),
    ),
    (
        tx(312.4, at(23, 59), "T-c"),
        customer((9, 20, 35, 6, 9), (280_000, 400_000, 610_000, 190_000, 280_000), at(23, 58)),
        TerminalAggregates((12, 70, 300), (4, 20, 90)),
        ("terminal",),
    ),
    (
        tx(0.0, at(12), "T-d"),
        customer((1, 4, 16, 1, 1), (0, 4_000, 16_000, 0, 0), at(11)),
        TerminalAggregates((3, 20, 90), (0, 0, 0)),
        ("customer",),
    ),
]


def vectors_of(cases: list[Any]) -> list[tuple[float, ...]]:
    return [feature_vector(t.amount, t.event_time_ms, c, term) for t, c, term, _ in cases]


def test_decide_with_model_equals_the_scorers_scores_thresholds_and_reasons() -> None:
    scorer = shipped_scorer()
    transactions = [case[0] for case in CASES]
    vectors = vectors_of(CASES)
    cold = [case[3] for case in CASES]
    records = decide_with_model(scorer, transactions, vectors, "stream", cold, 1_234)
    scores, manifest = scorer.score_batch(vectors)
    assert len(records) == len(CASES)
    assert [r.score for r in records] == scores.tolist()
    assert len(set(scores.tolist())) > 1  # the cases are not all scored alike
    assert [r.decision for r in records] == [manifest.thresholds.decide(s) for s in scores]
    for record, t, row, flags in zip(records, transactions, vectors, cold, strict=True):
        assert (record.transaction_id, record.customer_id, record.terminal_id) == (
            t.transaction_id,
            t.customer_id,
            t.terminal_id,
        )
        assert record.model_version == manifest.version == scorer.model_version
        assert record.feature_set_hash == FEATURE_SET_HASH
        assert record.reasons == tuple(
            ReasonCode("feature", r.feature, r.value, r.reference_median, r.deviation)
            for r in scorer.reasons(row)
        )
        assert record.cold_start == flags
        assert record.degraded == ()
        assert record.decided_at_ms == 1_234
        assert record.source == "stream"
    assert any(record.reasons for record in records)


class FixedManifestModel:
    """A model with the shipped manifest whose score is the amount / 1000 (exact thresholds)."""

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        self.manifest = manifest

    def predict_proba(self, rows: Any) -> npt.NDArray[np.float64]:
        return np.asarray(rows, dtype=np.float64)[:, 0] / 1000.0


class OneModelSource:
    def __init__(self, model: FixedManifestModel) -> None:
        self.model = model

    def load(self) -> FixedManifestModel:
        return self.model

    def poll(self) -> FixedManifestModel | None:
        return None


def shipped_manifest() -> Mapping[str, Any]:
    """The manifest shipped in the model layer (real feature names, hash, reference bins)."""
    raw: Mapping[str, Any] = json.loads(Path(default_model_dir(), "manifest.json").read_text())
    return raw


@pytest.mark.parametrize(
    ("amount", "decision"),
    [
        (0.0, Decision.APPROVE),
        (249.0, Decision.APPROVE),
        (250.0, Decision.REVIEW),
        (499.0, Decision.REVIEW),
        (500.0, Decision.DECLINE),
        (1000.0, Decision.DECLINE),
    ],
)
def test_decide_with_model_applies_the_serving_thresholds_at_their_boundaries(
    amount: float, decision: Decision
) -> None:
    scorer = Scorer(
        OneModelSource(FixedManifestModel(shipped_manifest())),
        review_threshold=0.25,
        decline_threshold=0.5,
    )
    t, c, term, _ = CASES[0]
    row = feature_vector(amount, t.event_time_ms, c, term)
    (record,) = decide_with_model(scorer, [t], [row], "api")
    assert record.score == pytest.approx(amount / 1000.0)
    assert record.decision is decision
    assert record.cold_start == ()
    assert record.source == "api"


def test_decide_with_model_of_nothing_is_nothing_and_without_a_model_raises() -> None:
    assert decide_with_model(shipped_scorer(), [], [], "stream") == []

    class Empty:
        def load(self) -> FixedManifestModel:
            raise FileNotFoundError("no model layer")

        def poll(self) -> FixedManifestModel | None:
            return None

    scorer = Scorer(Empty())
    assert scorer.model_version is None
    t, c, term, _ = CASES[0]
    with pytest.raises(NoModelError):
        decide_with_model(scorer, [t], [feature_vector(1.0, t.event_time_ms, c, term)], "api")
