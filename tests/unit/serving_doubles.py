"""Doubles for the kestrel.serving unit tests: feature store, models, breaker and service."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pybreaker
from stream_doubles import MemoryDecisions

from kestrel.adapters.onnx_model import LayerModelSource
from kestrel.decisions import DecisionRecord, Degraded, Rules
from kestrel.events import Transaction
from kestrel.features import (
    CUSTOMER_WINDOWS,
    CustomerAggregates,
    TerminalAggregates,
    TransactionPreview,
    feature_vector,
)
from kestrel.ports import Model
from kestrel.scoring import Scorer
from kestrel.serving import (
    ScoringService,
)
from kestrel.settings import default_model_dir

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
    monotonic: Callable[[], float] = time.monotonic,
) -> ScoringService:
    return ScoringService(
        reader=reader,
        scorer=scorer,
        decisions=decisions or MemoryDecisions(),
        rules=RULES,
        breaker=cb or breaker()[0],
        registry_check=registry or (lambda: None),
        clock_ms=lambda: NOW,
        monotonic=monotonic,
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
