"""scikit-learn → ONNX: conversion, the probability parity check and inference timing.

The ONNX model takes one float32 input ``features`` of shape (n, len(FEATURE_NAMES)) in
FEATURE_NAMES order and returns ``label`` and ``probabilities`` (n, 2) (no ZipMap).

Timing uses the scorer's own session options (`kestrel.adapters.onnx_model.session_options`)
and measures single rows two ways: hot (back-to-back calls, the model stays in the CPU
caches) and cold (before each timed call, `EVICT_BYTES` of other memory is written, as
the other work of an API request between two model calls evicts the model: 2 ms apart at
500 requests/s). A tree model's cold time grows with the tree nodes one row visits
(`kestrel_training.candidates.node_visits`), its hot time much less.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.pipeline import Pipeline

from kestrel.adapters.onnx_model import session_options

PARITY_TOLERANCE = 1e-5
INPUT_NAME = "features"
PROBABILITIES = "probabilities"
EVICT_BYTES = 32 * 2**20  # the last-level cache of this machine class (2-core EPYC: 32 MiB)


class ParityError(AssertionError):
    """onnxruntime's probabilities differ from scikit-learn's beyond the tolerance."""


def to_onnx(model: Any, n_features: int) -> bytes:
    """The fitted classifier (or pipeline) as a serialized ONNX model."""
    final = model.steps[-1][1] if isinstance(model, Pipeline) else model
    onnx_model = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={id(final): {"zipmap": False}},
    )
    return bytes(onnx_model.SerializeToString())


def session(onnx_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session with the scorer's options (one thread, as on Lambda)."""
    return ort.InferenceSession(
        onnx_bytes, session_options(threads), providers=["CPUExecutionProvider"]
    )


def onnx_scores(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Fraud probabilities from the ONNX session."""
    out = sess.run([PROBABILITIES], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(out[0][:, 1], dtype=np.float64)


def check_parity(
    onnx_bytes: bytes, model: Any, x: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> float:
    """Max |onnx - sklearn| probability over the rows of `x`; raise ParityError above tolerance."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    expected = np.asarray(model.predict_proba(x32)[:, 1], dtype=np.float64)
    got = onnx_scores(session(onnx_bytes), x32)
    diff = float(np.max(np.abs(got - expected))) if len(x32) else 0.0
    if not diff <= tolerance:
        worst = int(np.argmax(np.abs(got - expected)))
        raise ParityError(
            f"ONNX/sklearn parity failed: max abs diff {diff:.3g} > {tolerance:g} over "
            f"{len(x32):,} rows (row {worst}: onnx {got[worst]!r}, sklearn {expected[worst]!r})"
        )
    return diff


@dataclass(frozen=True)
class Latency:
    """onnxruntime inference times, one thread (cold: None when not measured)."""

    single_row_median_us: float
    single_row_p99_us: float
    batch_size: int
    batch_per_row_us: float
    calls: int
    cold_single_row_median_us: float | None = None
    cold_single_row_p99_us: float | None = None
    cold_calls: int = 0

    def describe(self) -> str:
        """One line: single row hot and cold (median, p99), then the batch."""
        return (
            f"single row {self.single_row_median_us} µs median, p99 {self.single_row_p99_us} µs;"
            f" cold {self.cold_single_row_median_us} µs median, p99 {self.cold_single_row_p99_us}"
            f" µs; batch of {self.batch_size}: {self.batch_per_row_us} µs/row"
        )


def single_row_times(
    sess: ort.InferenceSession, rows: list[np.ndarray], evict_bytes: int = 0
) -> np.ndarray:
    """µs of each one-row call; with `evict_bytes`, that much memory is written before each."""
    other = np.ones(max(evict_bytes // 8, 1))
    outputs, times = [PROBABILITIES], np.empty(len(rows))
    for i, row in enumerate(rows):
        if evict_bytes:
            np.add(other, 1.0, out=other)  # reads and writes every cache line of `other`
        started = time.perf_counter_ns()
        sess.run(outputs, {INPUT_NAME: row})
        times[i] = (time.perf_counter_ns() - started) / 1000.0
    return times


def measure_latency(
    onnx_bytes: bytes,
    x: np.ndarray,
    calls: int = 2000,
    batch_size: int = 500,
    cold_calls: int | None = None,
    evict_bytes: int = EVICT_BYTES,
) -> Latency:
    """Median and p99 of single-row calls, hot and cold (`cold_calls`, default calls // 4;
    0 skips them), and the per-row time of batches of `batch_size`."""
    sess = session(onnx_bytes)
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    rows = [x32[i % len(x32) : i % len(x32) + 1] for i in range(calls)]
    single_row_times(sess, rows[:50])  # warm-up
    single = single_row_times(sess, rows)
    n_cold = calls // 4 if cold_calls is None else cold_calls
    cold = single_row_times(sess, rows[:n_cold], evict_bytes) if n_cold else None
    batch = np.ascontiguousarray(np.resize(x32, (batch_size, x32.shape[1])))
    repeats = max(5, calls // batch_size)
    sess.run([PROBABILITIES], {INPUT_NAME: batch})
    per_batch = np.empty(repeats)
    for i in range(repeats):
        started = time.perf_counter_ns()
        sess.run([PROBABILITIES], {INPUT_NAME: batch})
        per_batch[i] = (time.perf_counter_ns() - started) / 1000.0
    return Latency(
        single_row_median_us=round(float(np.median(single)), 2),
        single_row_p99_us=round(float(np.percentile(single, 99)), 2),
        batch_size=batch_size,
        batch_per_row_us=round(float(np.median(per_batch)) / batch_size, 3),
        calls=calls,
        cold_single_row_median_us=None if cold is None else round(float(np.median(cold)), 2),
        cold_single_row_p99_us=None if cold is None else round(float(np.percentile(cold, 99)), 2),
        cold_calls=n_cold,
    )
