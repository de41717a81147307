"""scikit-learn → ONNX: conversion, the probability parity check and inference timing.

The ONNX model takes one float32 input ``features`` of shape (n, len(FEATURE_NAMES)) in
FEATURE_NAMES order and returns ``label`` and ``probabilities`` (n, 2) (no ZipMap).
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

PARITY_TOLERANCE = 1e-5
INPUT_NAME = "features"
PROBABILITIES = "probabilities"


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
    """An onnxruntime CPU session (one thread by default, as in a Lambda scorer)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


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
    """onnxruntime inference times, one thread."""

    single_row_median_us: float
    single_row_p99_us: float
    batch_size: int
    batch_per_row_us: float
    calls: int


def measure_latency(
    onnx_bytes: bytes, x: np.ndarray, calls: int = 2000, batch_size: int = 500
) -> Latency:
    """Median and p99 of single-row calls, and per-row time of batches of `batch_size`."""
    sess = session(onnx_bytes)
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    rows = [x32[i % len(x32) : i % len(x32) + 1] for i in range(calls)]
    for row in rows[:50]:  # warm-up
        sess.run([PROBABILITIES], {INPUT_NAME: row})
    single = np.empty(calls)
    for i, row in enumerate(rows):
        started = time.perf_counter_ns()
        sess.run([PROBABILITIES], {INPUT_NAME: row})
        single[i] = (time.perf_counter_ns() - started) / 1000.0
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
    )
