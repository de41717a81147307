"""Unit tests for shadow scoring: the challenger scores beside the champion, never decides."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from stream_doubles import AppliesInParts, MemoryDecisions, shipped_scorer
from telemetry_doubles import MemoryTelemetry

from kestrel.events import Label, Transaction, parse_transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
    TERMINAL_WINDOWS,
    AppliedTransaction,
    CustomerAggregates,
    TerminalAggregates,
)
from kestrel.ports import DeadLetter
from kestrel.scoring import ModelWithdrawn, Scorer
from kestrel.shadow import Shadow, shadow_score
from kestrel.streaming import TransactionPath
from kestrel.telemetry import SCORE_BINS, summarize, transaction_figures

T0 = 1_795_857_302_123
SHARD = "shardId-000000000001"


class Store(AppliesInParts):
    """FeatureStore double: every transaction new, its customer with `n` earlier ones."""

    def apply_transactions(
        self, transactions: Sequence[Transaction]
    ) -> list[AppliedTransaction | Exception]:
        return [
            AppliedTransaction(
                customer=CustomerAggregates(
                    counts=(1 + i % 4,) * len(CUSTOMER_WINDOWS),
                    sums_cents=(int(tx.amount * 100),) * len(CUSTOMER_WINDOWS),
                    previous_time_ms=None,
                ),
                terminal=TerminalAggregates(
                    counts=(i,) * len(TERMINAL_WINDOWS), frauds=(i % 2,) * len(TERMINAL_WINDOWS)
                ),
                applied=True,
            )
            for i, tx in enumerate(transactions)
        ]

    def apply_labels(self, labels: Sequence[Label]) -> list[bool | Exception]:
        return [True for _ in labels]


class EventLog:
    """EventLog double: the rows of each write."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write_batch(
        self, kind: str, batch_id: str, events: Sequence[Mapping[str, Any]], time_field: str
    ) -> list[str]:
        self.rows.extend(dict(e) for e in events)
        return [batch_id]


class NoDeadLetters:
    def send(self, letter: DeadLetter) -> None:
        raise AssertionError(f"unexpected poison: {letter.reason}")


class AmountModel:
    """A `Model` that scores by amount alone (not the shipped model), counting its calls."""

    def __init__(self, version: str, fail: bool = False) -> None:
        manifest = dict(shipped_scorer().source.load().manifest)
        self._manifest = {**manifest, "model_version": version}
        self.calls: list[int] = []
        self.fail = fail

    @property
    def manifest(self) -> Mapping[str, Any]:
        return self._manifest

    def predict_proba(self, rows: Any) -> npt.NDArray[np.float64]:
        matrix = np.asarray(rows, dtype=np.float32)
        self.calls.append(len(matrix))
        if self.fail:
            raise RuntimeError("onnxruntime: bad allocation")
        return np.asarray(1.0 / (1.0 + np.exp(-(matrix[:, 0] - 50.0) / 10.0)), np.float64)


class Offered:
    """A ModelSource double: offers `model` (or withdraws it when None) on the next poll."""

    def __init__(self, model: AmountModel | None) -> None:
        self.model: AmountModel | None = model
        self.changed = False

    def load(self) -> AmountModel:
        if self.model is None:
            raise ModelWithdrawn("no challenger set")
        return self.model

    def poll(self) -> AmountModel | None:
        if not self.changed:
            return None
        self.changed = False
        if self.model is None:
            raise ModelWithdrawn("the pointer names no challenger")
        return self.model


def records(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        doc = {"transaction_id": f"T-{i}", "customer_id": f"C-{i % 3}", "terminal_id": "TERM-1",
               "amount": 10.0 + 9.0 * i, "event_time": T0 + i}  # fmt: skip
        out.append({
            "kinesis": {"partitionKey": doc["customer_id"], "kinesisSchemaVersion": "1.0",
                        "data": base64.b64encode(json.dumps(doc).encode()).decode(),
                        "sequenceNumber": str(100 + i),
                        "approximateArrivalTimestamp": T0 / 1000 + 0.05},
            "eventSource": "aws:kinesis", "eventID": f"{SHARD}:{100 + i}",
        })  # fmt: skip
    return out


def path(
    challenger: Scorer | None, log: EventLog, decisions: MemoryDecisions, **kw: Any
) -> TransactionPath:
    return TransactionPath(
        parse_transaction, Store(), NoDeadLetters(), log, shipped_scorer(), [decisions],
        clock=lambda: T0 / 1000 + 1, challenger=challenger, **kw,
    )  # fmt: skip


def test_shadow_scoring_logs_both_scores_and_decides_with_the_champion_only() -> None:
    model = AmountModel("9")
    challenger = Scorer(Offered(model))
    plain_log, plain_decisions = EventLog(), MemoryDecisions()
    path(None, plain_log, plain_decisions).run(records(12))
    log, decisions = EventLog(), MemoryDecisions()
    outcome = path(challenger, log, decisions).run(records(12))

    assert model.calls == [12]  # one challenger call for the whole batch
    champion_version = shipped_scorer().model_version
    # The decisions are exactly those made without a challenger: the champion's.
    strip = [{**d.to_dict(), "decided_at": 0} for d in decisions.published]
    assert strip == [{**d.to_dict(), "decided_at": 0} for d in plain_decisions.published]
    assert {d.model_version for d in decisions.published} == {champion_version}
    vectors = [row["features"] for row in log.rows]
    expected = model.predict_proba(vectors).tolist()
    assert [row["shadow_score"] for row in log.rows] == expected
    assert {row["shadow_model_version"] for row in log.rows} == {"9"}
    assert [row["score"] for row in log.rows] == [d.score for d in decisions.published]
    assert {row["model_version"] for row in log.rows} == {champion_version}
    assert [row["score"] for row in log.rows] != expected  # two different models
    assert outcome.shadow is not None and outcome.shadow.scores == expected
    assert outcome.shadow.model_version == "9" and outcome.shadow.error is None
    # The rows without a challenger are the same rows minus the two shadow fields.
    shadowless = [{k: v for k, v in r.items() if not k.startswith("shadow_")} for r in log.rows]
    assert shadowless == plain_log.rows
    assert not any(k.startswith("shadow_") for row in plain_log.rows for k in row)


def test_shadow_scoring_failure_never_fails_the_batch() -> None:
    model = AmountModel("9", fail=True)
    log, decisions, telemetry = EventLog(), MemoryDecisions(), MemoryTelemetry()
    outcome = path(Scorer(Offered(model)), log, decisions, telemetry=telemetry).run(records(5))
    assert outcome.failures == {} and len(decisions.published) == 5 and len(log.rows) == 5
    assert outcome.shadow is not None and "bad allocation" in (outcome.shadow.error or "")
    assert not any("shadow_score" in row for row in log.rows)
    (figures,) = telemetry.recorded
    assert figures.counters["shadow_errors"] == 1 and "shadow_scored" not in figures.counters
    assert figures.shadow_model_version == "9"


def test_shadow_scoring_does_nothing_while_no_challenger_is_set_and_follows_its_source() -> None:
    source = Offered(None)
    challenger = Scorer(source, refresh_s=0.0)
    assert challenger.model_version is None and challenger.metrics()["model_refresh_errors"] == 0
    log = EventLog()
    first = path(challenger, log, MemoryDecisions()).run(records(3))
    assert first.shadow is None and not any("shadow_score" in r for r in log.rows)

    source.model, source.changed = AmountModel("9"), True  # a challenger is set
    second = path(challenger, EventLog(), MemoryDecisions()).run(records(3))
    assert second.shadow is not None and second.shadow.model_version == "9"

    source.model, source.changed = None, True  # and withdrawn
    assert shadow_score(challenger, [[1.0] * 21]) is None
    assert challenger.model_version is None
    assert challenger.metrics() == {
        "rejected_models": 0, "model_refresh_errors": 0, "model_swaps": 0,
    }  # fmt: skip


def test_shadow_scoring_skips_empty_batches_and_a_missing_challenger() -> None:
    model = AmountModel("9")
    assert shadow_score(Scorer(Offered(model)), []) is None
    assert shadow_score(None, [[1.0] * 21]) is None
    assert model.calls == []


def test_shadow_telemetry_counts_scores_names_the_challenger_and_shows_it() -> None:
    from kestrel.batch_outcome import BatchOutcome

    outcome = BatchOutcome(
        applied=3, scores=[0.1, 0.2, 0.3], model_version="4",
        shadow=Shadow("9", [0.01, 0.5, 0.99], 0.2),
    )  # fmt: skip
    figures = transaction_figures(outcome, T0 / 1000)
    assert (figures.model_version, figures.shadow_model_version) == ("4", "9")
    assert figures.counters["shadow_scored"] == 3
    shadow_bins = {k: v for k, v in figures.histograms.items() if k.startswith("shadow_score:")}
    assert shadow_bins == {"shadow_score:0": 1, "shadow_score:10": 1, "shadow_score:19": 1}
    plain = transaction_figures(BatchOutcome(applied=1, model_version="4"), T0 / 1000)
    assert plain.shadow_model_version is None
    assert not any(k.startswith("shadow") for k in (*plain.counters, *plain.histograms))

    telemetry = MemoryTelemetry()
    telemetry.record(figures)
    window, totals = telemetry.read(figures.second - 5, figures.second)
    assert totals["shadow_model_version"] == "9"
    body = summarize(window, totals, 0, 0, {}, None).to_dict()
    assert body["shadow"]["model_version"] == "9"
    assert (body["shadow"]["shadow_scored"], body["shadow"]["shadow_errors"]) == (3, 0)
    counts = body["shadow"]["score_histogram"]["counts"]
    assert len(counts) == SCORE_BINS and sum(counts) == 3
    telemetry.record(plain)  # a batch without a challenger: it is no longer named
    window, totals = telemetry.read(figures.second - 5, figures.second)
    assert summarize(window, totals, 0, 0, {}, None).to_dict()["shadow"]["model_version"] is None


@pytest.mark.parametrize("error", [None, "boom"])
def test_shadow_metrics_report_the_challengers_latency(error: str | None) -> None:
    from aws_lambda_powertools import Metrics

    from kestrel.batch_outcome import BatchOutcome
    from kestrel.stream_batch import transaction_metrics

    metrics = Metrics(namespace="Kestrel", service="kestrel")
    outcome = BatchOutcome(applied=1, shadow=Shadow("9", [] if error else [0.5], 1.5, error))
    transaction_metrics(metrics, outcome)
    emf: dict[str, Any] = dict(metrics.serialize_metric_set())
    metrics.clear_metrics()
    assert emf["ShadowScoringLatency"] == [1.5]
    assert emf["ShadowErrors"] == [int(error is not None)]
    assert emf["shadow_model_version"] == "9"
