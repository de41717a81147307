"""The end-to-end step test's decisions, as pure functions: lag slope, step verdict, next rate.

A step puts events at a fixed rate for a while and samples the consumer's backlog (records
put but not yet finished by the event-source mapping) as ``(seconds, backlog)`` pairs. A
rate is *sustained* when the producer kept its pace, the backlog did not grow over the
judged window (least-squares slope near zero, and the mean backlog over the window's last
seconds not above the mean over its first seconds by more than a tolerance), the stream
drained afterwards, and nothing was lost or failed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

Sample = tuple[float, float]  # (seconds since the step started, backlog in records)


@dataclass(frozen=True)
class Tolerances:
    """How strict a verdict is.

    Attributes:
        settle_s: samples before this (from the step's start) are not judged (the pipeline fills).
        edge_s: the backlog at the window's start/end is the mean over this many seconds.
        slope_share: the slope may be at most this share of the rate (records/s per records/s).
        growth_s: the end backlog may exceed the start backlog by this many seconds of input.
        pace_share: the producer must reach this share of the target rate.
        max_backlog_s: a backlog above this many seconds of input fails the step at once.
    """

    settle_s: float = 10.0
    edge_s: float = 3.0
    slope_share: float = 0.05
    growth_s: float = 1.5
    pace_share: float = 0.95
    max_backlog_s: float = 20.0


@dataclass
class StepOutcome:
    """What one step measured (input of `judge`)."""

    target_rate: float
    achieved_rate: float
    samples: list[Sample]
    duration_s: float
    lost: int = 0
    errors: int = 0
    producer_errors: int = 0
    drained: bool = True
    aborted: bool = False


@dataclass(frozen=True)
class Verdict:
    """Whether a step's rate was sustained, and why not."""

    passed: bool
    slope_per_s: float
    backlog_start: float
    backlog_end: float
    backlog_max: float
    reasons: tuple[str, ...] = field(default_factory=tuple)


def lag_slope(samples: Sequence[Sample]) -> float:
    """Least-squares slope of backlog over time (records/s); 0.0 with fewer than 2 points."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_b = sum(b for _, b in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (b - mean_b) for t, b in samples) / var


def window(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    """The samples with start <= t <= end."""
    return [(t, b) for t, b in samples if start <= t <= end]


def edge_means(samples: Sequence[Sample], edge_s: float) -> tuple[float, float]:
    """Mean backlog over the first and over the last `edge_s` seconds of `samples`."""
    if not samples:
        return 0.0, 0.0
    first_t, last_t = samples[0][0], samples[-1][0]
    head = [b for t, b in samples if t <= first_t + edge_s]
    tail = [b for t, b in samples if t >= last_t - edge_s]
    return sum(head) / len(head), sum(tail) / len(tail)


def judge(step: StepOutcome, tol: Tolerances = Tolerances()) -> Verdict:
    """The verdict on one step (see the module docstring)."""
    rate = max(step.target_rate, 1e-9)
    settle = min(tol.settle_s, step.duration_s / 3)
    judged = window(step.samples, settle, step.duration_s)
    slope = lag_slope(judged)
    start, end = edge_means(judged, tol.edge_s)
    peak = max((b for _, b in step.samples), default=0.0)
    reasons = []
    if step.aborted:
        reasons.append(f"aborted: backlog over {tol.max_backlog_s:g} s of input")
    if step.achieved_rate < tol.pace_share * step.target_rate:
        reasons.append(
            f"producer reached {step.achieved_rate:,.0f}/s of {step.target_rate:,.0f}/s "
            f"(< {tol.pace_share:.0%})"
        )
    if len(judged) < 2:
        reasons.append("too few backlog samples to judge")
    if slope > tol.slope_share * rate:
        reasons.append(f"backlog grew {slope:,.0f} records/s (> {tol.slope_share:.0%} of rate)")
    if end - start > tol.growth_s * rate:
        reasons.append(
            f"backlog {start:,.0f} -> {end:,.0f} "
            f"(+{end - start:,.0f} > {tol.growth_s:g} s of input)"
        )
    if not step.drained:
        reasons.append("the stream did not drain after the step")
    if step.lost:
        reasons.append(f"{step.lost} events lost")
    if step.errors:
        reasons.append(f"{step.errors} errors")
    if step.producer_errors:
        reasons.append(f"{step.producer_errors} producer errors")
    return Verdict(not reasons, slope, start, end, peak, tuple(reasons))


def should_abort(backlog: float, rate: float, tol: Tolerances = Tolerances()) -> bool:
    """True when the backlog is beyond doubt unbounded (more than max_backlog_s of input)."""
    return backlog > tol.max_backlog_s * max(rate, 1.0)


def round_rate(rate: float, quantum: float = 50.0) -> float:
    """`rate` rounded to a multiple of `quantum` (at least one quantum)."""
    return max(quantum, round(rate / quantum) * quantum)


def batching_wait_s(rate: float, batch_size: int, lanes: int, window_s: float) -> float:
    """The longest a record waits in its lane for its batch to be cut (not counting processing).

    A lane cuts a batch when it holds `batch_size` records or `window_s` after its first
    record; at `rate` events/s spread over `lanes` lanes a batch fills in batch_size * lanes
    / rate seconds.
    """
    return min(window_s, batch_size * lanes / rate) if rate > 0 else window_s


@dataclass
class Ladder:
    """The probing plan: rise by `factor` until a step fails, then one step in between.

    `passed`/`failed` hold the rates judged so far. `next_rate` returns None when probing
    is over; `best` is the highest rate that passed.
    """

    start: float
    factor: float = 1.5
    max_steps: int = 8
    min_rate: float = 50.0
    passed: list[float] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)

    def record(self, rate: float, ok: bool) -> None:
        """Note a step's verdict."""
        (self.passed if ok else self.failed).append(rate)

    @property
    def best(self) -> float | None:
        """The highest rate that passed, if any."""
        return max(self.passed) if self.passed else None

    def next_rate(self) -> float | None:
        """The next rate to probe, or None when done."""
        steps = len(self.passed) + len(self.failed)
        if steps >= self.max_steps:
            return None
        if not steps:
            return round_rate(self.start)
        lowest_fail = min(self.failed) if self.failed else math.inf
        best = self.best
        if best is None:  # everything failed so far: halve the lowest failure
            rate = round_rate(lowest_fail / 2)
            return rate if rate >= self.min_rate and rate < lowest_fail else None
        if lowest_fail == math.inf:
            return round_rate(best * self.factor)
        middle = round_rate(math.sqrt(best * lowest_fail))
        tried = set(self.passed) | set(self.failed)
        if best < middle < lowest_fail and middle not in tried and lowest_fail / best > 1.25:
            return middle
        return None

    def fallback(self, rate: float) -> float | None:
        """The highest passed rate below `rate` (a failed hold falls back one step)."""
        lower = [r for r in self.passed if r < rate]
        return max(lower) if lower else None


@dataclass(frozen=True)
class Population:
    """The simulated population the records come from."""

    customers: int = 5000
    terminals: int = 10000
    days: int = 183
    seed: int = 7


@dataclass(frozen=True)
class E2EConfig:
    """Sizes of one run (see SIZES)."""

    shards: int = 4
    start_rate: float = 1000.0
    factor: float = 1.5
    probe_s: float = 30.0
    max_probes: int = 7
    probe_budget_s: float = 360.0
    hold_s: float = 300.0
    freshness_rate: float = 5000.0
    freshness_s: float = 60.0
    warmup_rate: float = 300.0
    warmup_s: float = 10.0
    drain_timeout_s: float = 120.0
    max_concurrency: int | None = None  # None: KESTREL_MAX_CONCURRENCY's default (4)
    total_s: float = 1000.0  # start-up to the last step (the suite allows the part 1080 s)
    population: Population = field(default_factory=Population)
    tolerances: Tolerances = field(default_factory=Tolerances)


SIZES = {
    "full": E2EConfig(),
    "medium": E2EConfig(
        probe_s=15.0,
        max_probes=5,
        probe_budget_s=150.0,
        hold_s=60.0,
        total_s=420.0,
        freshness_s=20.0,
        population=Population(days=60),
    ),
    "tiny": E2EConfig(  # proves the plumbing in seconds; its verdicts mean nothing
        shards=2,
        start_rate=100.0,
        max_probes=1,
        probe_s=3.0,
        probe_budget_s=10.0,
        hold_s=3.0,
        total_s=100.0,
        freshness_rate=200.0,
        warmup_rate=50.0,
        warmup_s=1.0,
        drain_timeout_s=30.0,
        max_concurrency=2,
        population=Population(customers=200, terminals=400, days=3),
        tolerances=Tolerances(
            settle_s=0.5, edge_s=0.5, slope_share=5.0, growth_s=10.0, pace_share=0.8
        ),
    ),
}
