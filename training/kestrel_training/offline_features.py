"""Offline, point-in-time features: the aggregates of `kestrel.features`, computed with numpy.

Same definitions as the online store (`kestrel.adapters.redis_features`), computed from the
whole event log at once. `feature_vector` (shared) turns the aggregates into the values, so
online and offline give the same numbers for the same events.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kestrel.features import (
    CUSTOMER_LOOKBACK_MS,
    CUSTOMER_WINDOWS,
    DAY_MS,
    FEATURE_NAMES,
    TERMINAL_DELAY_MS,
    TERMINAL_WINDOWS,
    CustomerAggregates,
    TerminalAggregates,
    cents,
    feature_vector,
)

TRANSACTION_COLUMNS = ["transaction_id", "customer_id", "terminal_id", "amount", "event_time"]


def customer_aggregates(tx: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per transaction: counts and cent sums per customer window, and the previous time (-1)."""
    order = np.lexsort(
        (tx["transaction_id"].to_numpy(), tx["event_time"].to_numpy(), tx["customer_id"].to_numpy())
    )
    times = tx["event_time"].to_numpy(dtype=np.int64)[order]
    amounts = np.array([cents(a) for a in tx["amount"].to_numpy()], dtype=np.int64)[order]
    customers = tx["customer_id"].to_numpy()[order]
    n, nwin = len(tx), len(CUSTOMER_WINDOWS)
    counts = np.zeros((n, nwin), dtype=np.int64)
    sums = np.zeros((n, nwin), dtype=np.int64)
    previous = np.full(n, -1, dtype=np.int64)
    boundaries = np.flatnonzero(customers[1:] != customers[:-1]) + 1
    for lo, hi in zip(np.r_[0, boundaries], np.r_[boundaries, n], strict=True):
        t = times[lo:hi]
        cumulative = np.concatenate(([0], np.cumsum(amounts[lo:hi])))
        position = np.arange(hi - lo) + 1  # rows up to and including this one, (time, id) order
        for w, (_, width) in enumerate(CUSTOMER_WINDOWS):
            first = np.searchsorted(t, t - width, side="right")
            counts[lo:hi, w] = position - first
            sums[lo:hi, w] = cumulative[position] - cumulative[first]
        prev = np.r_[-1, t[:-1]]
        recent = (prev >= 0) & (prev > t - CUSTOMER_LOOKBACK_MS)
        previous[lo:hi] = np.where(recent, prev, -1)
    out_counts, out_sums, out_prev = (np.empty_like(a) for a in (counts, sums, previous))
    out_counts[order], out_sums[order], out_prev[order] = counts, sums, previous
    return out_counts, out_sums, out_prev


def terminal_aggregates(tx: pd.DataFrame, labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per transaction: terminal counts and known frauds per window, D days back."""
    n, nwin = len(tx), len(TERMINAL_WINDOWS)
    counts = np.zeros((n, nwin), dtype=np.int64)
    frauds = np.zeros((n, nwin), dtype=np.int64)
    times_all = tx["event_time"].to_numpy(dtype=np.int64)
    fraud_labels = labels[labels["is_fraud"].astype(bool)].drop_duplicates(
        "transaction_id", keep="first"
    )
    fraud_time = fraud_labels.merge(
        tx[["transaction_id", "terminal_id", "event_time"]],
        on=["transaction_id"],
        suffixes=("_label", ""),
    )
    fraud_by_terminal = {k: g for k, g in fraud_time.groupby("terminal_id", sort=False)}
    for terminal, index in tx.groupby("terminal_id", sort=False).indices.items():
        t = times_all[index]
        sorted_t = np.sort(t)
        high = t - TERMINAL_DELAY_MS
        for w, (_, width) in enumerate(TERMINAL_WINDOWS):
            counts[index, w] = np.searchsorted(sorted_t, high, side="right") - np.searchsorted(
                sorted_t, high - width, side="right"
            )
        group = fraud_by_terminal.get(terminal)
        if group is None:
            continue
        f = group["event_time"].to_numpy(dtype=np.int64)
        known_from = group["label_time"].to_numpy(dtype=np.int64)
        known_from = known_from - known_from % DAY_MS + DAY_MS  # label_time < day start of t
        # A fraud at time f, known from day start K, counts for t in [max(f + D, K), f + D + W).
        for w, (_, width) in enumerate(TERMINAL_WINDOWS):
            starts = np.maximum(f + TERMINAL_DELAY_MS, known_from)
            ends = f + TERMINAL_DELAY_MS + width
            valid = starts < ends
            s_sorted, e_sorted = np.sort(starts[valid]), np.sort(ends[valid])
            frauds[index, w] = np.searchsorted(s_sorted, t, side="right") - np.searchsorted(
                e_sorted, t, side="right"
            )
    return counts, frauds


def offline_features(
    transactions: pd.DataFrame, labels: pd.DataFrame, keep: np.ndarray | None = None
) -> pd.DataFrame:
    """The feature table (FEATURE_NAMES columns) for every transaction, in input order.

    Every transaction counts in the aggregates; `keep` (a boolean mask over `transactions`)
    limits the rows returned, so history rows cost no feature vector.
    """
    tx = transactions[TRANSACTION_COLUMNS].reset_index(drop=True)
    c_counts, c_sums, previous = customer_aggregates(tx)
    t_counts, t_frauds = terminal_aggregates(tx, labels)
    wanted = np.arange(len(tx)) if keep is None else np.flatnonzero(keep)
    amounts, times = tx["amount"].to_numpy(), tx["event_time"].to_numpy()
    rows = [
        feature_vector(
            float(amounts[i]),
            int(times[i]),
            CustomerAggregates(
                tuple(c_counts[i]), tuple(c_sums[i]), int(previous[i]) if previous[i] >= 0 else None
            ),
            TerminalAggregates(tuple(t_counts[i]), tuple(t_frauds[i])),
        )
        for i in wanted
    ]
    table = pd.DataFrame(rows, columns=list(FEATURE_NAMES))
    table.insert(0, "transaction_id", tx["transaction_id"].to_numpy()[wanted])
    return table
