"""In-memory telemetry doubles: a sink/source with the Redis adapter's semantics, and more."""

from __future__ import annotations

from typing import Any

from kestrel.telemetry import BatchFigures, TelemetryWindow, combine, events_of


class MemoryTelemetry:
    """TelemetrySink and TelemetrySource double: per-second buckets and totals in dicts.

    It adds counters to the bucket and the totals, histograms to the bucket, keeps maxima,
    and records the model version and last batch time as `RedisTelemetry` does. `down`
    makes every call raise.
    """

    def __init__(self) -> None:
        self.buckets: dict[int, dict[str, float]] = {}
        self.totals: dict[str, str] = {}
        self.recorded: list[BatchFigures] = []
        self.reads: list[tuple[int, int]] = []
        self.down: Exception | None = None

    def record(self, figures: BatchFigures) -> None:
        if self.down is not None:
            raise self.down
        self.recorded.append(figures)
        bucket = self.buckets.setdefault(figures.second, {})
        for name, value in figures.counters.items():
            bucket[name] = bucket.get(name, 0) + value
            self.totals[name] = str(int(self.totals.get(name, "0")) + value)
        for name, value in figures.histograms.items():
            bucket[name] = bucket.get(name, 0) + value
        for name, peak in figures.maxima.items():
            bucket[name] = max(bucket.get(name, peak), peak)
        if figures.model_version:
            self.totals["model_version"] = figures.model_version
            if figures.shadow_model_version:
                self.totals["shadow_model_version"] = figures.shadow_model_version
            else:
                self.totals.pop("shadow_model_version", None)
        self.totals["last_batch_ms"] = str(figures.second * 1000)

    def read(self, first_s: int, last_s: int) -> tuple[TelemetryWindow, dict[str, str]]:
        if self.down is not None:
            raise self.down
        self.reads.append((first_s, last_s))
        buckets = [self.buckets.get(s, {}) for s in range(first_s, last_s + 1)]
        window = TelemetryWindow(combine(buckets), tuple(events_of(b) for b in buckets))
        return window, dict(self.totals)


class FixedDepths:
    """QueueDepths double: the depths it was given, counting calls."""

    def __init__(self, depths: dict[str, int | None]) -> None:
        self.values = depths
        self.calls = 0

    def depths(self) -> dict[str, int | None]:
        self.calls += 1
        return dict(self.values)


class MemoryDrift:
    """DriftStatusReader double."""

    def __init__(self, status: dict[str, Any] | None = None) -> None:
        self.status = status

    def latest(self) -> dict[str, Any] | None:
        return None if self.status is None else dict(self.status)
