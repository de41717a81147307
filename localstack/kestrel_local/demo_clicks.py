"""`make demo`'s clickstream: simulated clicks streamed beside the transactions, and their figures.

The clicks come from the seeded clickstream simulator (`kestrel_training.click_simulator`,
2,000 users, from its first day: every user starts cold) and go through the producer onto
ClickstreamStream, where the local runtime's ClickstreamFunction applies their features and
stores each user's propensity. A click counts as processed once its session hash holds its
event id (the click store's exactly-once index); freshness is the clickstream telemetry's
(Kinesis arrival to propensity stored); the propensity distribution is the telemetry's
histogram of every click's propensity, and the deciles of the users' latest propensities as
stored in Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from kestrel_training.click_parity import simulated_clicks
from kestrel_training.click_simulator import EVENT_COLUMNS

from kestrel.adapters.redis_click_lua import user_keys
from kestrel.adapters.redis_propensity import propensity_key

# Clicks per second streamed beside the transactions by default: measured on 2 cores with
# the default 2,000 transactions/s (README, make demo).
DEFAULT_CLICK_RATE = 100.0
DEFAULT_CLICK_API_RATE = 10.0  # POST /v1/propensity per second
BEHIND_MS = 2000.0  # as for transactions: the stream lags the producer by over 2 s
CHUNK = 5_000


@dataclass
class ClickSummary:
    """The clickstream's lines of the demo's summary."""

    rate: float = 0.0
    sent: int = 0
    processed: int = 0
    users: int = 0
    freshness_p50_ms: float = math.nan
    freshness_p99_ms: float = math.nan
    histogram: list[int] = field(default_factory=list)  # every click, 10 bins of 0.1
    deciles: list[float] = field(default_factory=list)  # users' latest, p10..p90
    users_scored: int = 0
    model_version: str = ""
    api_requests: int = 0
    api_errors: int = 0
    api_p50_ms: float = math.nan
    api_p99_ms: float = math.nan
    api_in_handler_p99_ms: float = math.nan
    fell_behind: bool = False


def click_records(events: int, seed: int) -> list[dict[str, Any]]:
    """The first `events` clicks of the simulator as producer records (no NaN: null)."""
    frame = simulated_clicks(events, seed)[list(EVENT_COLUMNS)]
    records = []
    for row in frame.to_dict("records"):
        records.append(
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        )
    return records


def second_pacer(rate: float) -> Callable[[int, Mapping[str, Any]], float]:
    """Each second's `rate` clicks due together at the start of that second.

    A shop's web tier buffers clicks and puts them once a second. Put one by one (every
    1/rate s), each poll of ClickstreamFunction's mappings would find a few clicks: at 50 or
    200 clicks/s about 1,600 invocations in two minutes, whose fixed cost per batch (the event
    log object, telemetry, the model call) cost the transactions' freshness (README, The demo).
    """
    return lambda index, _record: float(math.floor(index / rate))


def api_bodies(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The clicks as `POST /v1/propensity` bodies (a page view has no product fields)."""
    return [{k: v for k, v in r.items() if v is not None} for r in records]


def _processed(store: redis.Redis, records: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Whether each click's session hash holds its event id (applied once)."""
    out: list[bool] = []
    for i in range(0, len(records), CHUNK):
        pipe = store.pipeline(transaction=False)
        for r in records[i : i + CHUNK]:
            session = user_keys(str(r["user_id"]), str(r["session_id"]))[-1]
            pipe.hexists(session, f"e:{r['event_id']}")
        out.extend(bool(n) for n in pipe.execute())
    return out


def wait_processed(
    store: redis.Redis,
    records: Sequence[Mapping[str, Any]],
    check: Callable[[], None],
    timeout_s: float,
    error: Callable[[str], Exception],
) -> int:
    """Wait until every click is applied; how many are (raises `error(...)` on timeout)."""
    pending = list(records)
    deadline = time.monotonic() + timeout_s
    while pending:
        check()
        pending = [
            r for r, done in zip(pending, _processed(store, pending), strict=True) if not done
        ]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise error(f"{len(pending):,} clicks still not processed after the wait")
        time.sleep(1.0)
    return len(records) - len(pending)


def latest_propensities(store: redis.Redis, users: Sequence[str]) -> list[float]:
    """The users' stored propensities (users without one left out)."""
    values: list[float] = []
    for i in range(0, len(users), CHUNK):
        pipe = store.pipeline(transaction=False)
        for user in users[i : i + CHUNK]:
            pipe.hget(propensity_key(user), "propensity")
        values.extend(float(v) for v in pipe.execute() if v is not None)
    return values


def tenths(counts: Sequence[int]) -> list[int]:
    """A 20-bin histogram on [0, 1] as 10 bins of 0.1."""
    padded = list(counts) + [0] * (20 - len(counts))
    return [int(padded[2 * i] + padded[2 * i + 1]) for i in range(10)]


def fill(
    summary: ClickSummary,
    store: redis.Redis,
    records: Sequence[Mapping[str, Any]],
    snapshot: Mapping[str, Any],
) -> None:
    """The figures from Redis and the run's clickstream telemetry (`snapshot`)."""
    users = sorted({str(r["user_id"]) for r in records})
    summary.users = len(users)
    latest = latest_propensities(store, users)
    summary.users_scored = len(latest)
    if latest:
        summary.deciles = [float(q) for q in np.percentile(latest, range(10, 100, 10))]
    fresh = snapshot.get("freshness_ms") or {}
    summary.freshness_p50_ms = _float(fresh.get("p50"))
    summary.freshness_p99_ms = _float(fresh.get("p99"))
    summary.histogram = tenths((snapshot.get("propensity_histogram") or {}).get("counts") or [])
    summary.model_version = str(snapshot.get("model_version") or "")


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _num(value: Any) -> str:
    return f"{float(value):,.0f}" if isinstance(value, int | float) else "-"


def progress_part(snap: Mapping[str, Any]) -> str:
    """The clickstream's part of the demo's progress line (empty without clicks)."""
    clicks = snap.get("clickstream")
    if not isinstance(clicks, Mapping):
        return ""
    rate = (clicks.get("events_per_s") or {}).get("current")
    fresh = clicks.get("freshness_ms") or {}
    return (
        f" | clicks {_num(rate)}/s p50 {_num(fresh.get('p50'))} ms p99 {_num(fresh.get('p99'))} ms"
    )


class Lag:
    """Says once when the clickstream lags the producer by over `BEHIND_MS` twice in a row."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._late = 0
        self.fell_behind = False

    def check(self, snap: Mapping[str, Any]) -> str | None:
        """A warning the second poll in a row whose click freshness p50 is over `BEHIND_MS`."""
        clicks = snap.get("clickstream") or {}
        p50 = (clicks.get("freshness_ms") or {}).get("p50")
        late = isinstance(p50, int | float) and p50 > BEHIND_MS
        self._late = self._late + 1 if late else 0
        if self._late != 2:
            return None
        self.fell_behind = True
        current = (clicks.get("events_per_s") or {}).get("current")
        return (
            f"warning: this machine is not keeping up with the clickstream: propensities lag "
            f"the stream by {_num(p50)} ms (p50), processing {_num(current)} clicks/s of "
            f"{self.rate:,.0f} produced; a backlog is building. Try a lower rate: "
            "make demo CLICK_RATE=<clicks/s>"
        )


def _fmt(value: float, spec: str, unit: str = "") -> str:
    return "n/a" if math.isnan(value) else f"{value:{spec}}{unit}"


def summary_rows(c: ClickSummary) -> list[tuple[str, str]]:
    """The clickstream's rows of the closing table."""
    total = sum(c.histogram)
    shares = ", ".join(
        f"{i / 10:.1f}-{(i + 1) / 10:.1f} {100 * n / total:.1f}%" for i, n in enumerate(c.histogram)
    )
    deciles = " ".join(f"{q:.3f}" for q in c.deciles) or "n/a"
    return [
        ("Clicks streamed / processed", f"{c.sent:,} / {c.processed:,} ({c.users:,} users)"),
        (
            "Clicks kept up with the stream",
            "no: propensities lagged by over 2 s; lower CLICK_RATE on this machine"
            if c.fell_behind
            else f"yes, at {c.rate:,.0f} clicks/s",
        ),
        (
            "Click freshness p50 / p99",
            f"{_fmt(c.freshness_p50_ms, ',.0f', ' ms')} / {_fmt(c.freshness_p99_ms, ',.0f', ' ms')}"
            " (arrival to propensity stored)",
        ),
        ("Propensity, every click", f"{shares} ({total:,} scored)" if total else "none scored"),
        (
            "Propensity deciles, users' latest",
            f"p10..p90 {deciles} ({c.users_scored:,} users)",
        ),
        (
            "API p50 / p99 (/v1/propensity)",
            f"{_fmt(c.api_p50_ms, '.2f', ' ms')} / {_fmt(c.api_p99_ms, '.2f', ' ms')}"
            f" over {c.api_requests:,} requests, {c.api_errors} errors"
            f" (in the handler: p99 {_fmt(c.api_in_handler_p99_ms, '.2f', ' ms')})",
        ),
        ("Propensity model", c.model_version or "none"),
    ]
