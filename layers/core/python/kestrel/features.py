"""Kestrel's features, declared once: the streaming path, the API and training all use this.

Every feature is a pure function of a transaction and two aggregates: what the customer
did in exact trailing windows ending at the transaction (inclusive), and what happened at
the terminal in windows that end `TERMINAL_DELAY_MS` earlier, counting only fraud labels
known before the transaction's UTC day began. Online, the Redis store computes the
aggregates in one script per entity; offline, numpy computes the same aggregates from the
event log. `feature_vector` turns either into the same numbers.

Window semantics (all bounds in epoch milliseconds, t = the transaction's event time):
- customer window W: transactions of the customer with t - W < time and (time, id) <= (t, id
  of this one): this one included, and of two at the same millisecond the smaller id first;
- terminal window W: transactions of the terminal with t - D - W < time <= t - D, D = 7 days;
  frauds among them are those whose label time is before the start of t's UTC day;
- seconds since previous: t minus the time of the customer's transaction just before this
  one in that order, if within 30 days, else `NO_PREVIOUS_S`.
Amounts are summed in integer cents, so sums are exact everywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# Customer windows, in the order the aggregates carry them.
CUSTOMER_WINDOWS: tuple[tuple[str, int], ...] = (
    ("1DAY", DAY_MS),
    ("7DAY", 7 * DAY_MS),
    ("30DAY", 30 * DAY_MS),
    ("10MIN", 10 * MINUTE_MS),
    ("1HOUR", HOUR_MS),
)
TERMINAL_WINDOWS: tuple[tuple[str, int], ...] = (
    ("1DAY", DAY_MS),
    ("7DAY", 7 * DAY_MS),
    ("30DAY", 30 * DAY_MS),
)
TERMINAL_DELAY_MS = 7 * DAY_MS
NIGHT_LAST_HOUR = 6
NO_PREVIOUS_S = 30 * 24 * 3600.0
CUSTOMER_LOOKBACK_MS = max(w for _, w in CUSTOMER_WINDOWS)
TERMINAL_LOOKBACK_MS = TERMINAL_DELAY_MS + max(w for _, w in TERMINAL_WINDOWS)

FEATURE_NAMES: tuple[str, ...] = (
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    *(
        f"CUSTOMER_ID_{kind}_{label}_WINDOW"
        for label, _ in CUSTOMER_WINDOWS[:3]
        for kind in ("NB_TX", "AVG_AMOUNT")
    ),
    *(
        f"TERMINAL_ID_{kind}_{label}_WINDOW"
        for label, _ in TERMINAL_WINDOWS
        for kind in ("NB_TX", "RISK")
    ),
    *(
        f"CUSTOMER_ID_{kind}_{label}_WINDOW"
        for label, _ in CUSTOMER_WINDOWS[3:]
        for kind in ("NB_TX", "SUM_AMOUNT")
    ),
    "CUSTOMER_ID_SECONDS_SINCE_PREV_TX",
    "CUSTOMER_ID_AMOUNT_OVER_30DAY_AVG",
)


def _definition() -> dict[str, object]:
    return {
        "names": FEATURE_NAMES,
        "customer_windows_ms": CUSTOMER_WINDOWS,
        "terminal_windows_ms": TERMINAL_WINDOWS,
        "terminal_delay_ms": TERMINAL_DELAY_MS,
        "night_last_hour": NIGHT_LAST_HOUR,
        "no_previous_s": NO_PREVIOUS_S,
        "label_rule": "label_time < start of the transaction's UTC day",
        "windows": "exact, (t - W, t] for customers with (time, id) ties, (t - D - W, t - D]"
        " for terminals",
        "amounts": "integer cents",
    }


FEATURE_SET_HASH = hashlib.sha256(json.dumps(_definition(), sort_keys=True).encode()).hexdigest()[
    :16
]


def cents(amount: float) -> int:
    """An amount in integer cents, rounded half away from zero (amounts carry 2 decimals)."""
    scaled = abs(amount) * 100.0
    whole = int(scaled + 0.5)
    return whole if amount >= 0 else -whole


def day_start_ms(time_ms: int) -> int:
    """The start of the UTC day that contains `time_ms`."""
    return time_ms - time_ms % DAY_MS


# The aggregates of every stream event: slots dataclasses, not frozen (a frozen one sets each
# field through ``object.__setattr__``, ~1.5 µs per event for these three); treat them as
# immutable all the same.
@dataclass(slots=True)
class CustomerAggregates:
    """Counts and cent sums per customer window (CUSTOMER_WINDOWS order), and the previous time."""

    counts: tuple[int, ...]
    sums_cents: tuple[int, ...]
    previous_time_ms: int | None


@dataclass(slots=True)
class TerminalAggregates:
    """Transaction counts and known frauds per terminal window (TERMINAL_WINDOWS order)."""

    counts: tuple[int, ...]
    frauds: tuple[int, ...]


@dataclass(slots=True)
class AppliedTransaction:
    """The aggregates as of one transaction, whether this call applied it (not a replay), and
    whether its customer and terminal held other transactions (else: cold start)."""

    customer: CustomerAggregates
    terminal: TerminalAggregates
    applied: bool
    customer_known: bool = True
    terminal_known: bool = True


@dataclass(frozen=True, slots=True)
class TransactionPreview:
    """The aggregates a transaction would get if applied now, and whether its entities are known.

    An entity is known when it holds at least one other transaction in the store; an
    unknown one is scored with cold-start features (zero counts, no previous transaction).
    """

    customer: CustomerAggregates
    terminal: TerminalAggregates
    customer_known: bool
    terminal_known: bool

    @property
    def cold_start(self) -> tuple[str, ...]:
        """The entities scored with cold-start features: ``customer``, ``terminal``."""
        return cold_start(self.customer_known, self.terminal_known)


def cold_start(customer_known: bool, terminal_known: bool) -> tuple[str, ...]:
    """The names of the unknown entities, customer first."""
    if customer_known:
        return () if terminal_known else ("terminal",)
    return ("customer",) if terminal_known else ("customer", "terminal")


def feature_vector(
    amount: float, event_time_ms: int, customer: CustomerAggregates, terminal: TerminalAggregates
) -> tuple[float, ...]:
    """The feature values in FEATURE_NAMES order."""
    # Written out, one line per feature (twice as fast as loops over the windows, and every
    # event comes here): a change to the windows fails loudly in these unpackings.
    c_1day, c_7day, c_30day, c_10min, c_1hour = customer.counts
    s_1day, s_7day, s_30day, s_10min, s_1hour = customer.sums_cents
    t_1day, t_7day, t_30day = terminal.counts
    f_1day, f_7day, f_30day = terminal.frauds
    previous = customer.previous_time_ms
    amount = float(amount)
    return (
        amount,
        1.0 if (event_time_ms // DAY_MS + 3) % 7 >= 5 else 0.0,  # 1970-01-01 was a Thursday
        1.0 if (event_time_ms % DAY_MS) // 1000 // 3600 <= NIGHT_LAST_HOUR else 0.0,
        float(c_1day), s_1day / c_1day / 100.0 if c_1day else 0.0,
        float(c_7day), s_7day / c_7day / 100.0 if c_7day else 0.0,
        float(c_30day), s_30day / c_30day / 100.0 if c_30day else 0.0,
        float(t_1day), f_1day / t_1day if t_1day else 0.0,
        float(t_7day), f_7day / t_7day if t_7day else 0.0,
        float(t_30day), f_30day / t_30day if t_30day else 0.0,
        float(c_10min), s_10min / 100.0,
        float(c_1hour), s_1hour / 100.0,
        (event_time_ms - previous) / 1000.0 if previous is not None else NO_PREVIOUS_S,
        amount / (s_30day / c_30day / 100.0) if c_30day and s_30day else 0.0,
    )  # fmt: skip
