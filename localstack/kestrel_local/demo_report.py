"""`make demo`'s figures: fraud caught against the simulator's labels, and the summary table
(the clickstream's rows from `kestrel_local.demo_clicks`)."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from kestrel_training.protocol import evaluate

from kestrel_local.demo_clicks import ClickSummary, summary_rows

DAY_MS = 86_400_000


@dataclass
class DemoSummary:
    """Everything the demo's closing table shows."""

    events_sent: int = 0
    events_decided: int = 0
    labels_sent: int = 0
    seconds: float = 0.0
    freshness_p50_ms: float = math.nan
    freshness_p99_ms: float = math.nan
    api_requests: int = 0
    api_errors: int = 0
    api_p50_ms: float = math.nan
    api_p99_ms: float = math.nan
    api_in_handler_p99_ms: float = math.nan
    decisions: dict[str, int] = field(default_factory=dict)
    frauds: int = 0
    average_precision: float = math.nan
    card_precision_100: float = math.nan
    frauds_unknown_cards: int = 0
    unknown_cards_ap: float = math.nan
    unknown_cards_cp100: float = math.nan
    test_set_ap: float = math.nan
    test_set_cp100: float = math.nan
    backfill: str = "none: the store started empty"
    poison_injected: int = 0
    poison_parked: int = 0
    redrive: dict[str, dict[str, int]] = field(default_factory=dict)
    model_version: str = ""
    drift: str = "not checked"
    rate: float = 0.0
    fell_behind: bool = False
    clicks: ClickSummary | None = None  # None: the demo streamed no clicks

    @property
    def events_per_s(self) -> float:
        """Decided events over the run's wall time."""
        return self.events_decided / self.seconds if self.seconds > 0 else math.nan

    def as_json(self) -> str:
        """The summary as JSON (written to the run folder)."""
        return json.dumps({**asdict(self), "events_per_s": self.events_per_s}, indent=2)


def fraud_caught(
    transactions: pd.DataFrame, scores: Sequence[float | None], start_ms: int
) -> tuple[float, float]:
    """AP and CP@100 of the stream's scores against the simulator's `is_fraud` labels."""
    frame = pd.DataFrame(
        {
            "customer_id": transactions["customer_id"].to_numpy(),
            "is_fraud": transactions["is_fraud"].to_numpy(),
            "day": (transactions["event_time"].to_numpy() - start_ms) // DAY_MS,
        }
    )
    score = np.array([np.nan if s is None else s for s in scores], dtype=np.float64)
    keep = ~np.isnan(score)
    metrics = evaluate(frame[keep], score[keep])
    return metrics.average_precision, metrics.card_precision_100


def known_cards(transactions: pd.DataFrame, fraud_labels: pd.DataFrame | None) -> np.ndarray:
    """True for transactions of cards with a fraud labelled before their UTC day began: the
    Fraud Detection Handbook's known compromised cards, which its test set leaves out."""
    if fraud_labels is None or fraud_labels.empty:
        return np.zeros(len(transactions), dtype=bool)
    first = fraud_labels.groupby("customer_id")["label_time"].min()
    known_at = transactions["customer_id"].map(first).to_numpy(dtype=np.float64)
    times = transactions["event_time"].to_numpy()
    with np.errstate(invalid="ignore"):
        return np.asarray(known_at < times - times % DAY_MS, dtype=bool)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, NaN for no values."""
    return float(np.percentile(values, q)) if len(values) else math.nan


def decision_counts(decisions: Iterable[dict[str, Any] | None]) -> dict[str, int]:
    """How many transactions got each decision (degraded ones counted apart too)."""
    counts: Counter[str] = Counter()
    for decision in decisions:
        if decision is not None:
            counts[str(decision["decision"]).lower()] += 1
            counts["degraded"] += bool(decision.get("degraded"))
    return {k: counts[k] for k in ("approve", "review", "decline", "degraded")}


def _fmt(value: float, spec: str = ",.0f", unit: str = "") -> str:
    return "n/a" if math.isnan(value) else f"{value:{spec}}{unit}"


def summary_table(s: DemoSummary) -> str:
    """The closing table, aligned text."""
    d = s.decisions
    redrive = "; ".join(
        f"{queue}: {', '.join(f'{k} {v}' for k, v in counts.items())}"
        for queue, counts in s.redrive.items()
    )
    rows = [
        ("Events streamed / decided", f"{s.events_sent:,} / {s.events_decided:,}"),
        ("Labels fed back", f"{s.labels_sent:,}"),
        ("Throughput", f"{_fmt(s.events_per_s)} events/s over {s.seconds:.0f} s"),
        (
            "Kept up with the stream",
            "no: decisions lagged by over 2 s; lower RATE on this machine"
            if s.fell_behind
            else f"yes, at {s.rate:,.0f} events/s",
        ),
        (
            "Freshness p50 / p99",
            f"{_fmt(s.freshness_p50_ms, ',.0f', ' ms')} / "
            f"{_fmt(s.freshness_p99_ms, ',.0f', ' ms')}",
        ),
        (
            "API p50 / p99 (/v1/score)",
            f"{_fmt(s.api_p50_ms, '.2f', ' ms')} / {_fmt(s.api_p99_ms, '.2f', ' ms')}"
            f" over {s.api_requests:,} requests, {s.api_errors} errors"
            f" (in the handler: p99 {_fmt(s.api_in_handler_p99_ms, '.2f', ' ms')})",
        ),
        (
            "Decisions",
            f"approve {d.get('approve', 0):,}, review {d.get('review', 0):,}, "
            f"decline {d.get('decline', 0):,} (degraded {d.get('degraded', 0):,})",
        ),
        ("History backfilled", s.backfill),
        (
            "Fraud caught (window)",
            f"AP {_fmt(s.average_precision, '.3f')}, CP@100 {_fmt(s.card_precision_100, '.3f')}"
            f" ({s.frauds:,} frauds)",
        ),
        (
            "  without known cards",
            f"AP {_fmt(s.unknown_cards_ap, '.3f')}, CP@100 {_fmt(s.unknown_cards_cp100, '.3f')}"
            f" ({s.frauds_unknown_cards:,} frauds; the test set's rule), model's test set: "
            f"AP {_fmt(s.test_set_ap, '.3f')}, CP@100 {_fmt(s.test_set_cp100, '.3f')}",
        ),
        ("Model", s.model_version or "none"),
        ("Drift (last 24 h of event time)", s.drift),
        ("Poison injected / parked", f"{s.poison_injected} / {s.poison_parked}"),
        ("Redrive", redrive or "nothing to redrive"),
        *(summary_rows(s.clicks) if s.clicks is not None else []),
    ]
    width = max(len(name) for name, _ in rows)
    line = "-" * (width + 3 + max(len(value) for _, value in rows))
    body = "\n".join(f"{name:<{width}} | {value}" for name, value in rows)
    return f"{line}\nKestrel demo summary\n{line}\n{body}\n{line}"
