"""Reasons for a score: the features furthest above their training median.

`explain_rows` is `kestrel.scoring.Scorer.explain`'s work for a given manifest: for each
row, the `top` features whose deviation from the training median (in units of the
training spread) is largest and positive, ties in feature order, deviations rounded to six
places. One row, the API's case, is done in plain Python; a batch (from
`_VECTOR_EXPLAIN_ROWS` rows) on the whole matrix with numpy, with the same picks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from kestrel.scoring import ModelManifest

R = TypeVar("R")


def explain_rows(
    build: Callable[[str, float, float, float], R],
    rows: Any,
    manifest: ModelManifest,
    top: int = 3,
) -> list[tuple[R, ...]]:
    """Each row's reasons, each made by ``build(feature, value, median, deviation)``."""
    medians, spreads = manifest.medians.tolist(), manifest.spreads.tolist()
    names, width = manifest.feature_names, len(medians)
    if isinstance(rows, np.ndarray):
        matrix = rows.ndim == 2
    else:
        matrix = bool(rows) and isinstance(rows[0], (Sequence, np.ndarray))
    if matrix and len(rows) >= _VECTOR_EXPLAIN_ROWS:
        return _explain_matrix(np.asarray(rows, dtype=np.float64), manifest, top, build)
    values = rows.tolist() if isinstance(rows, np.ndarray) else rows
    if isinstance(values, (list, tuple)) and values and not isinstance(values[0], Sequence):
        values = [values]  # one row
    explained = []
    for row in values:
        if len(row) != width:
            raise ValueError(f"expected rows of {width} features, got {len(row)}")
        # Largest deviation first, ties in feature order (a stable sort).
        dev = [(v - m) / s for v, m, s in zip(row, medians, spreads, strict=True)]
        picks = sorted(range(width), key=dev.__getitem__, reverse=True)[:top]
        explained.append(
            tuple(
                build(names[i], float(row[i]), medians[i], round(dev[i], 6))
                for i in picks
                if dev[i] > 0
            )
        )
    return explained


# From this many rows on, `Scorer.explain` works on the whole matrix at once (numpy pays off
# above about a dozen rows; one row, the API's case, is faster in plain Python).
_VECTOR_EXPLAIN_ROWS = 16


def _explain_matrix(
    values: npt.NDArray[np.float64],
    manifest: ModelManifest,
    top: int,
    build: Callable[[str, float, float, float], R],
) -> list[tuple[R, ...]]:
    """`Scorer.explain_as` for a matrix of rows: the same picks, ties and rounding."""
    width = len(manifest.medians)
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(f"expected rows of {width} features, got shape {values.shape}")
    deviation = (values - manifest.medians) / manifest.spreads
    # Largest deviation first, ties in feature order (a stable sort of the negated values).
    picks = np.argsort(-deviation, axis=1, kind="stable")[:, :top]
    names = np.asarray(manifest.feature_names, dtype=object)[picks].tolist()
    # A list, then a tuple: faster than a tuple of a generator, and this runs for every event.
    return [
        tuple([
            build(n, v, m, round(d, 6))
            for n, v, m, d in zip(row_names, picked, medians, devs, strict=True)
            if d > 0
        ])
        for row_names, picked, medians, devs in zip(
            names,
            np.take_along_axis(values, picks, 1).tolist(),
            manifest.medians[picks].tolist(),
            np.take_along_axis(deviation, picks, 1).tolist(),
            strict=True,
        )
    ]  # fmt: skip
