"""Unit tests for the drift statistics on scipy (PSI, KS) and the reference grids, known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kestrel_training.manifest import GRID_SIZE, distribution
from scipy.stats import ks_2samp

from kestrel.adapters.scipy_drift import PSI_FLOOR, ScipyDriftStatistics

STATS = ScipyDriftStatistics()


def psi_by_hand(expected: list[float], observed: list[float]) -> float:
    """The textbook formula, written out: sum((a - e) * ln(a / e)), shares floored."""
    total = 0.0
    for e, a in zip(expected, observed, strict=True):
        e, a = max(e, PSI_FLOOR), max(a, PSI_FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def test_drift_psi_of_a_known_shift() -> None:
    # 0.25 ln 2 + 0.25 ln 1.5 = 0.27465...
    assert STATS.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.2746530722, abs=1e-9)
    assert STATS.psi([0.5, 0.5], [0.5, 0.5]) == 0.0


@pytest.mark.parametrize(
    ("expected", "observed"),
    [
        ([0.1] * 10, [0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.15, 0.15]),
        ([0.0, 0.7, 0.3], [0.0, 0.5, 0.5]),  # an empty bin on both sides adds nothing
        ([0.5, 0.5, 0.0], [0.5, 0.4, 0.1]),  # a bin empty in the reference: floored
    ],
)
def test_drift_psi_matches_the_formula_and_is_symmetric(
    expected: list[float], observed: list[float]
) -> None:
    assert STATS.psi(expected, observed) == pytest.approx(psi_by_hand(expected, observed))
    assert STATS.psi(expected, observed) == pytest.approx(STATS.psi(observed, expected))


def test_drift_psi_refuses_different_bins() -> None:
    with pytest.raises(ValueError, match="same bins"):
        STATS.psi([0.5, 0.5], [0.2, 0.3, 0.5])


def test_drift_ks_known_statistic_and_scipys_own_p_value() -> None:
    sample = np.arange(100, dtype=np.float64)
    grid = list(np.arange(100, dtype=np.float64) + 50)  # half of the mass moved by 50
    d, p = STATS.ks(sample, grid, reference_rows=100)
    assert d == pytest.approx(0.5)
    # With the grid's own size, the p-value is exactly scipy's asymptotic two-sample one.
    assert p == pytest.approx(ks_2samp(sample, grid, method="asymp").pvalue, rel=1e-12)
    # A reference of many more rows is known better: the same gap is less likely by chance.
    assert STATS.ks(sample, grid, reference_rows=100_000)[1] < p


def test_drift_ks_p_value_at_the_five_percent_critical_gap() -> None:
    # Kolmogorov's asymptotic 5% critical value is 1.358 / sqrt(n): p ~ 0.05 there.
    n = 20_000
    sample = (np.arange(n) + 0.5) / n
    grid = list(sample + 1.358 / math.sqrt(n))  # a fine grid: D is the shift itself
    d, p = STATS.ks(sample, grid, reference_rows=10**9)
    assert d == pytest.approx(1.358 / math.sqrt(n), abs=1e-4)
    assert p == pytest.approx(0.05, abs=0.004)


def test_drift_ks_needs_values_on_both_sides() -> None:
    with pytest.raises(ValueError, match="both sides"):
        STATS.ks(np.zeros(0), [1.0], 10)


@pytest.mark.parametrize("kind", ["normal", "counts", "flag"])
def test_drift_ks_on_the_grid_is_within_half_a_percent_of_the_full_reference(kind: str) -> None:
    rng = np.random.default_rng(5)

    def draw(n: int) -> np.ndarray:
        if kind == "normal":
            return np.asarray(rng.normal(50, 20, n), dtype=np.float64)
        if kind == "counts":
            return np.asarray(rng.poisson(3, n), dtype=np.float64)
        return np.asarray(rng.random(n) < 0.3, dtype=np.float64)

    reference, window = draw(60_000), draw(5_000) * 1.05 + 0.5
    grid = distribution(reference)["quantiles"]
    assert len(grid) == GRID_SIZE
    d_grid, _ = STATS.ks(window, grid, len(reference))
    d_full = ks_2samp(window, reference).statistic
    assert abs(d_grid - d_full) <= 1 / (2 * GRID_SIZE) + 1e-3


def test_drift_reference_grid_rule() -> None:
    values = np.arange(1, 1001, dtype=np.float64)  # 1..1000
    out = distribution(values)
    assert out["quantiles"][0] == 5.0  # level 0.005 of 1000 values: the 5th (inverted CDF)
    assert out["quantiles"][-1] == 995.0  # level 0.995: the 995th
    assert out["cuts"] == [100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0]
    # Bin 0 is below the first cut (1..99), the last at or above the last one (900..1000).
    assert out["proportions"] == pytest.approx([0.099, *[0.1] * 8, 0.101])
    assert distribution(np.zeros(0)) == {"cuts": [], "proportions": [0.0], "quantiles": []}
