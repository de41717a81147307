"""Decisions: what Kestrel says about each transaction, why, and the rules it falls back on.

One `DecisionRecord` per scored transaction, the same shape on the decisions stream, in
Redis and in the API's answer. Its reasons are the model's top features (see
`kestrel.scoring`), or, when the model or the features are not available, the rule that
fired. `decide_with_model` is the one place both the stream and the API turn feature
vectors into decisions, so the same transaction and state give the same score on both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any

import numpy as np
import orjson

from kestrel.events import Transaction
from kestrel.features import DAY_MS, FEATURE_SET_HASH, NIGHT_LAST_HOUR
from kestrel.scoring import Decision, Scorer


class Degraded(StrEnum):
    """Why a decision was made with less than the model and the features."""

    FEATURE_STORE_UNAVAILABLE = "feature_store_unavailable"
    NO_MODEL = "no_model"
    MODEL_ERROR = "model_error"


@dataclass(slots=True)
class ReasonCode:
    """One reason for a decision: a feature far above its training median, or a rule.

    Not frozen (a frozen dataclass sets each field through ``object.__setattr__``, which
    costs ~0.6 µs per reason on the stream's hot path); treat it as immutable all the same.
    """

    kind: str
    name: str
    value: float
    reference: float
    deviation: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "name": self.name,
            "value": self.value,
            "reference": self.reference,
            "deviation": self.deviation,
        }


@dataclass(slots=True)
class DecisionRecord:
    """A transaction's score, decision, reasons and the provenance of all three.

    Not frozen, for the same reason as `ReasonCode` (12 fields: ~2 µs per transaction);
    treat it as immutable all the same: `json` is encoded once and kept.
    """

    transaction_id: str
    customer_id: str
    terminal_id: str
    score: float | None
    decision: Decision
    model_version: str | None
    feature_set_hash: str
    reasons: tuple[ReasonCode, ...]
    degraded: tuple[Degraded, ...]
    cold_start: tuple[str, ...]
    decided_at_ms: int
    source: str
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the decisions stream's record, the Redis value, the API's body)."""
        return {
            "transaction_id": self.transaction_id,
            "customer_id": self.customer_id,
            "terminal_id": self.terminal_id,
            "score": self.score,
            "decision": self.decision.value,
            "model_version": self.model_version,
            "feature_set_hash": self.feature_set_hash,
            "reasons": [r.to_dict() for r in self.reasons],
            "degraded": bool(self.degraded),
            "degraded_reasons": [d.value for d in self.degraded],
            "cold_start": {"customer": "customer" in self.cold_start,
                           "terminal": "terminal" in self.cold_start},
            "decided_at": self.decided_at_ms,
            "source": self.source,
        }  # fmt: skip

    @property
    def json(self) -> bytes:
        """`to_dict` as compact JSON, encoded once (the stream, Redis and the API share it)."""
        if self._json is None:
            self._json = orjson.dumps(self.to_dict())
        return self._json

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DecisionRecord:
        """Read back what `to_dict` wrote."""
        cold = doc["cold_start"]
        return cls(
            transaction_id=doc["transaction_id"],
            customer_id=doc["customer_id"],
            terminal_id=doc["terminal_id"],
            score=doc["score"],
            decision=Decision(doc["decision"]),
            model_version=doc["model_version"],
            feature_set_hash=doc["feature_set_hash"],
            reasons=tuple(ReasonCode(**r) for r in doc["reasons"]),
            degraded=tuple(Degraded(d) for d in doc["degraded_reasons"]),
            cold_start=tuple(k for k in ("customer", "terminal") if cold[k]),
            decided_at_ms=int(doc["decided_at"]),
            source=doc["source"],
        )


@dataclass(frozen=True, slots=True)
class Rules:
    """Rules on the request alone, used when the model or the features are unavailable.

    DECLINE at or above `decline_amount`; REVIEW at or above `review_amount`, or at night
    (00:00-06:59 UTC, as the TX_DURING_NIGHT feature) at or above `night_review_amount`;
    else APPROVE.
    """

    review_amount: float
    night_review_amount: float
    decline_amount: float

    def decide(self, tx: Transaction) -> tuple[Decision, tuple[ReasonCode, ...]]:
        """The decision for one transaction and the rule that fired (none for APPROVE)."""
        if tx.amount >= self.decline_amount:
            return Decision.DECLINE, (
                ReasonCode("rule", "amount_at_or_over_decline_limit", tx.amount,
                           self.decline_amount),
            )  # fmt: skip
        if tx.amount >= self.review_amount:
            return Decision.REVIEW, (
                ReasonCode("rule", "amount_at_or_over_review_limit", tx.amount,
                           self.review_amount),
            )  # fmt: skip
        night = (tx.event_time_ms % DAY_MS) // 3_600_000 <= NIGHT_LAST_HOUR
        if night and tx.amount >= self.night_review_amount:
            return Decision.REVIEW, (
                ReasonCode("rule", "night_amount_at_or_over_review_limit", tx.amount,
                           self.night_review_amount),
            )  # fmt: skip
        return Decision.APPROVE, ()


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def decide_with_model(
    scorer: Scorer,
    transactions: Sequence[Transaction],
    vectors: Sequence[Sequence[float]],
    source: str,
    cold_start: Sequence[tuple[str, ...]] | None = None,
    decided_at_ms: int | None = None,
) -> list[DecisionRecord]:
    """Score feature vectors (FEATURE_NAMES order) in one batch; raise NoModelError if none."""
    if not transactions:
        return []
    # One conversion of the vectors for both: the model's float32 rows are this matrix cast
    # (Python floats are float64 already), and the reasons work on it as it is.
    matrix = np.asarray(vectors, dtype=np.float64)
    scores, manifest = scorer.score_batch(matrix)
    explained = scorer.explain_as(_feature_reason, matrix, manifest=manifest)
    decide, version = manifest.thresholds.decide, manifest.version
    at = now_ms() if decided_at_ms is None else decided_at_ms
    cold = cold_start or [()] * len(transactions)
    # Positional (DecisionRecord's field order): keywords cost ~0.5 µs more per record.
    return [
        DecisionRecord(
            tx.transaction_id, tx.customer_id, tx.terminal_id, score, decide(score), version,
            FEATURE_SET_HASH, reasons, (), flags, at, source,
        )
        for tx, score, reasons, flags in zip(
            transactions, scores.tolist(), explained, cold, strict=True
        )
    ]  # fmt: skip


_feature_reason = partial(ReasonCode, "feature")


def decide_with_rules(
    rules: Rules,
    tx: Transaction,
    degraded: tuple[Degraded, ...],
    source: str,
    cold_start: tuple[str, ...] = (),
) -> DecisionRecord:
    """A rules-only decision, flagged with why the model path was not used."""
    decision, reasons = rules.decide(tx)
    return DecisionRecord(
        transaction_id=tx.transaction_id,
        customer_id=tx.customer_id,
        terminal_id=tx.terminal_id,
        score=None,
        decision=decision,
        model_version=None,
        feature_set_hash=FEATURE_SET_HASH,
        reasons=reasons,
        degraded=degraded,
        cold_start=cold_start,
        decided_at_ms=now_ms(),
        source=source,
    )
