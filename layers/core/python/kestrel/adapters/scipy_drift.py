"""`DriftStatistics` on scipy: PSI from scipy.special.rel_entr, KS from scipy.stats.

PSI is ``sum((a - e) * ln(a / e))`` = ``sum(rel_entr(a, e) + rel_entr(e, a))`` (the
symmetrised Kullback-Leibler divergence). A bin empty on one side would make it infinite,
so shares are floored at `PSI_FLOOR` (1e-4, the usual choice) first.

KS: `scipy.stats.ks_2samp` gives D between the window's values and the reference's
percentile grid (the grid stands for the reference distribution: its empirical CDF is
within 1 / (2 * grid size) of the reference's, 0.005 for 100 quantiles). The p-value is
computed the way ks_2samp does for large samples (``kstwo.sf(D, round(n * m / (n + m)))``,
Smirnov's asymptotic form), but with m the number of rows the reference summarises rather
than the grid's length, which would understate its precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.special import rel_entr
from scipy.stats import ks_2samp, kstwo

PSI_FLOOR = 1e-4


class ScipyDriftStatistics:
    """PSI and two-sample KS with scipy (see the module docstring for the formulas)."""

    def psi(self, expected: Sequence[float], observed: Sequence[float]) -> float:
        """PSI of `observed` against `expected` bin shares, each share floored at PSI_FLOOR."""
        e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
        a = np.maximum(np.asarray(observed, dtype=np.float64), PSI_FLOOR)
        if e.shape != a.shape:
            raise ValueError(f"PSI needs the same bins on both sides ({e.shape} vs {a.shape})")
        return float(np.sum(rel_entr(a, e) + rel_entr(e, a)))

    def ks(
        self, sample: npt.NDArray[np.float64], grid: Sequence[float], reference_rows: int
    ) -> tuple[float, float]:
        """KS statistic D against the reference grid and its p-value for `reference_rows` rows."""
        values = np.asarray(sample, dtype=np.float64)
        reference = np.asarray(grid, dtype=np.float64)
        if not len(values) or not len(reference):
            raise ValueError("KS needs values on both sides")
        d = float(ks_2samp(values, reference, method="asymp").statistic)
        m = max(int(reference_rows), len(reference))
        n_eff = max(1, round(len(values) * m / (len(values) + m)))
        return d, float(kstwo.sf(d, n_eff))
