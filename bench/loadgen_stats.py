"""Per-request records of an open-loop run, and the statistics read from them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kestrel_local.http_wire import parse_server_timing

PENDING, RESPONSE, TIMEOUT, CONNECTION_ERROR = 0, 1, 2, 3
OUTCOMES = ("pending", "response", "timeout", "connection")  # by outcome code


def percentile(ascending: Sequence[float], q: float) -> float:
    """Nearest-rank percentile `q` (0-100] of ascending values (the value at rank ceil(q% n))."""
    if not ascending:
        return math.nan
    return ascending[min(len(ascending), max(1, math.ceil(q / 100 * len(ascending)))) - 1]


def summarize(values: Iterable[float]) -> dict[str, float]:
    """count, mean, p50, p90, p95, p99, p99.9 and max of `values` (nan when empty)."""
    v = sorted(values)
    stats = {"count": float(len(v)), "mean": sum(v) / len(v) if v else math.nan}
    for name, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("p999", 99.9)):
        stats[name] = percentile(v, q)
    stats["max"] = v[-1] if v else math.nan
    return stats


@dataclass
class LoadResult:
    """Per-request records of one run (times are absolute ``perf_counter_ns``)."""

    intended_ns: list[int]
    scheduled_ns: list[int]
    sent_ns: list[int]
    done_ns: list[int]
    status: list[int]
    outcome: list[int]
    server_timing: list[bytes]
    bodies: list[bytes]
    connections: int = 0
    pool_waits: int = 0
    max_waiting: int = 0
    reconnects: int = 0
    started_wall: float = 0.0
    elapsed_s: float = 0.0
    errors_detail: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> LoadResult:
        """Records for `n` requests, none sent yet."""
        z = [0] * n
        return cls(z[:], z[:], z[:], z[:], z[:], [PENDING] * n, [b""] * n, [b""] * n)

    def is_error(self, i: int) -> bool:
        """Non-2xx, timed out, connection error or never finished."""
        return self.outcome[i] != RESPONSE or not 200 <= self.status[i] < 300

    def latency_ms(self, i: int) -> float:
        """Intended send time to the last byte (or to the timeout), in ms."""
        return (self.done_ns[i] - self.intended_ns[i]) / 1e6


def summary(result: LoadResult) -> dict[str, Any]:
    """Latency (responses and timeouts), in-handler time, client lag and error counts."""
    r, every = result, range(len(result.intended_ns))
    span = r.scheduled_ns[-1] - r.scheduled_ns[0] if every and r.scheduled_ns[-1] else 0
    answered = [i for i in every if r.outcome[i] == RESPONSE]
    in_handler = [parse_server_timing(r.server_timing[i]) for i in answered]
    kinds = dict.fromkeys(("non_2xx", "timeout", "connection", "pending"), 0)
    kinds["non_2xx"] = sum(not 200 <= r.status[i] < 300 for i in answered)
    for i in every:
        if r.outcome[i] != RESPONSE:
            kinds[OUTCOMES[r.outcome[i]]] += 1
    return {
        "requests": len(every),
        "errors": sum(kinds.values()),
        "errors_by_kind": kinds,
        "statuses": dict(Counter(str(r.status[i]) for i in answered)),
        "latency_ms": summarize(
            r.latency_ms(i) for i in every if r.outcome[i] in (RESPONSE, TIMEOUT)
        ),
        "in_handler_ms": summarize(v for v in in_handler if v is not None),
        "missing_server_timing": sum(v is None for v in in_handler),
        "sched_lag_ms": summarize(
            (r.scheduled_ns[i] - r.intended_ns[i]) / 1e6 for i in every if r.scheduled_ns[i]
        ),
        "send_lag_ms": summarize(
            (r.sent_ns[i] - r.intended_ns[i]) / 1e6 for i in every if r.sent_ns[i]
        ),
        "achieved_rate": (len(every) - 1) * 1e9 / span if span > 0 else math.nan,  # sends/s
        "pool_waits": result.pool_waits,
        "max_waiting": result.max_waiting,
        "reconnects": result.reconnects,
        "connections": result.connections,
    }
