"""Doubles shared by the stream-path unit tests: the shipped model and an in-memory sink."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import cache

from kestrel.adapters.onnx_model import LayerModelSource
from kestrel.decisions import DecisionRecord
from kestrel.events import Transaction
from kestrel.features import AppliedTransaction
from kestrel.scoring import Scorer
from kestrel.settings import default_model_dir


@cache
def shipped_scorer() -> Scorer:
    """A scorer serving the model shipped in layers/model (real onnxruntime, no network)."""
    return Scorer(LayerModelSource(default_model_dir()))


class MemoryDecisions:
    """DecisionSink and DecisionLookup double: keeps every published decision in order."""

    def __init__(self) -> None:
        self.published: list[DecisionRecord] = []

    def publish(self, decisions: Sequence[DecisionRecord]) -> None:
        self.published.extend(decisions)

    def decision(self, transaction_id: str) -> DecisionRecord | None:
        found = [d for d in self.published if d.transaction_id == transaction_id]
        return found[0] if found else None


class AppliesInParts:
    """`FeatureStore.apply_transactions_in_parts` for a double: its `apply_transactions`
    on each part in turn."""

    def apply_transactions(
        self, transactions: Sequence[Transaction]
    ) -> list[AppliedTransaction | Exception]:
        raise NotImplementedError

    def apply_transactions_in_parts(
        self, parts: Iterable[Sequence[Transaction]]
    ) -> Iterator[list[AppliedTransaction | Exception]]:
        for part in parts:
            yield self.apply_transactions(part)
