"""Unit tests for the end-to-end step test's decisions: lag slope, verdicts, the rate ladder."""

from __future__ import annotations

from typing import Any

import pytest

from bench.e2e_logic import (
    SIZES,
    Ladder,
    StepOutcome,
    Tolerances,
    batching_wait_s,
    edge_means,
    judge,
    lag_slope,
    round_rate,
    should_abort,
)


def sawtooth(rate: float, seconds: float, growth: float = 0.0) -> list[tuple[float, float]]:
    """A backlog sampled 4 times a second: a 1 s batching sawtooth plus `growth` records/s."""
    samples = []
    for i in range(int(seconds * 4) + 1):
        t = i / 4
        samples.append((t, rate * (t % 1.0) + growth * t))
    return samples


def step(rate: float = 1000.0, growth: float = 0.0, **kw: Any) -> StepOutcome:
    outcome = StepOutcome(rate, rate, sawtooth(rate, 30.0, growth), 30.0)
    for key, value in kw.items():
        setattr(outcome, key, value)
    return outcome


def test_lag_slope_is_zero_for_a_flat_backlog() -> None:
    assert lag_slope([(t, 500.0) for t in range(20)]) == 0.0


def test_lag_slope_recovers_a_linear_growth() -> None:
    assert lag_slope([(t, 100.0 + 37.5 * t) for t in range(20)]) == pytest.approx(37.5)


def test_lag_slope_needs_two_points_and_some_time() -> None:
    assert lag_slope([]) == 0.0
    assert lag_slope([(1.0, 5.0)]) == 0.0
    assert lag_slope([(1.0, 5.0), (1.0, 9.0)]) == 0.0


def test_edge_means_average_the_first_and_last_seconds() -> None:
    samples = [(float(t), float(t)) for t in range(11)]
    assert edge_means(samples, 2.0) == (1.0, 9.0)
    assert edge_means([], 2.0) == (0.0, 0.0)


def test_judge_passes_a_bounded_sawtooth_backlog() -> None:
    verdict = judge(step())
    assert verdict.passed, verdict.reasons
    assert abs(verdict.slope_per_s) < 0.05 * 1000


def test_judge_fails_a_growing_backlog_and_says_so() -> None:
    verdict = judge(step(growth=200.0))
    assert not verdict.passed
    assert any("backlog grew" in r for r in verdict.reasons)
    assert verdict.backlog_end > verdict.backlog_start


def test_judge_ignores_the_settle_period() -> None:
    samples = [(t / 4, 20_000.0 if t / 4 < 5 else 300.0) for t in range(121)]
    assert judge(StepOutcome(1000.0, 1000.0, samples, 30.0)).passed


def test_judge_fails_when_the_producer_fell_behind() -> None:
    verdict = judge(step(achieved_rate=900.0))
    assert not verdict.passed
    assert any("producer reached" in r for r in verdict.reasons)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("lost", 3, "3 events lost"),
        ("errors", 2, "2 errors"),
        ("producer_errors", 1, "1 producer errors"),
        ("drained", False, "did not drain"),
        ("aborted", True, "aborted"),
    ],
)
def test_judge_fails_on_any_loss_error_or_undrained_stream(
    field: str, value: Any, reason: str
) -> None:
    verdict = judge(step(**{field: value}))
    assert not verdict.passed
    assert any(reason in r for r in verdict.reasons)


def test_judge_needs_samples() -> None:
    verdict = judge(StepOutcome(1000.0, 1000.0, [(0.0, 1.0)], 30.0))
    assert not verdict.passed
    assert "too few backlog samples to judge" in verdict.reasons


def test_should_abort_only_past_the_bound() -> None:
    tol = Tolerances(max_backlog_s=20.0)
    assert not should_abort(19_999, 1000.0, tol)
    assert should_abort(20_001, 1000.0, tol)


def test_round_rate_keeps_at_least_one_quantum() -> None:
    assert round_rate(1687.5) == 1700.0
    assert round_rate(10.0) == 50.0


def test_ladder_rises_until_a_failure_then_probes_between_once() -> None:
    ladder = Ladder(start=1000.0, factor=1.5)
    seen = []
    capacity = 3000.0
    while (rate := ladder.next_rate()) is not None:
        seen.append(rate)
        ladder.record(rate, rate <= capacity)
    assert seen == [1000.0, 1500.0, 2250.0, 3400.0, 2750.0]
    assert ladder.best == 2750.0


def test_ladder_halves_when_the_first_rate_fails() -> None:
    ladder = Ladder(start=1000.0, min_rate=200.0)
    seen = []
    while (rate := ladder.next_rate()) is not None:
        seen.append(rate)
        ladder.record(rate, rate <= 300.0)
    assert seen == [1000.0, 500.0, 250.0, 350.0, 300.0]  # halve, then narrow the gap
    assert ladder.best == 300.0


def test_ladder_stops_at_max_steps_and_gives_up_below_min_rate() -> None:
    ladder = Ladder(start=100.0, factor=2.0, max_steps=3)
    while (rate := ladder.next_rate()) is not None:
        ladder.record(rate, True)
    assert ladder.passed == [100.0, 200.0, 400.0]
    never = Ladder(start=100.0, min_rate=60.0)
    while (rate := never.next_rate()) is not None:
        never.record(rate, False)
    assert never.best is None
    assert never.failed == [100.0]


def test_ladder_fallback_is_the_next_lower_passed_rate() -> None:
    ladder = Ladder(start=1000.0)
    for rate, ok in ((1000.0, True), (1500.0, True), (2250.0, False)):
        ladder.record(rate, ok)
    assert ladder.fallback(1500.0) == 1000.0
    assert ladder.fallback(1000.0) is None


def test_sizes_scale_down_and_full_holds_five_minutes() -> None:
    assert SIZES["full"].hold_s == 300.0
    assert SIZES["full"].shards >= 4
    assert SIZES["full"].freshness_rate == 5000.0
    budget = {name: c.probe_budget_s + c.hold_s for name, c in SIZES.items()}
    assert budget["tiny"] < budget["medium"] < budget["full"]


def test_batching_wait_is_the_window_until_batches_fill_faster() -> None:
    # the template: BatchSize 500, 1 s window, 4 shards x ParallelizationFactor 2 = 8 lanes
    assert batching_wait_s(846.0, 500, 8, 1.0) == 1.0
    assert batching_wait_s(5000.0, 500, 8, 1.0) == pytest.approx(0.8)
    assert batching_wait_s(10_000.0, 500, 8, 1.0) == pytest.approx(0.4)
    assert batching_wait_s(0.0, 500, 8, 1.0) == 1.0
