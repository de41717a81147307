"""`cover`: the aligned telemetry buckets (1 s, 10 s, 1 min) that make up a window exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kestrel.adapters.redis_telemetry import BUCKET_SIZES, bucket_key, cover
from kestrel.telemetry import MAX_WINDOW_S

T0 = 1_795_857_000  # a multiple of 60


@given(
    first=st.integers(min_value=0, max_value=4_000_000_000),
    length=st.integers(min_value=1, max_value=MAX_WINDOW_S),
)
def test_telemetry_cover_is_exact_aligned_ordered_and_at_most_86_buckets(
    first: int, length: int
) -> None:
    blocks = cover(first, first + length - 1)
    seconds = [s for size, start in blocks for s in range(start, start + size)]
    assert seconds == list(range(first, first + length))
    assert all(size in BUCKET_SIZES and start % size == 0 for size, start in blocks)
    assert len(blocks) <= 86


def test_telemetry_cover_worst_case_is_86_and_an_aligned_hour_is_60_minutes() -> None:
    worst = max(
        len(cover(first, first + length - 1))
        for first in range(T0, T0 + 60)
        for length in range(MAX_WINDOW_S - 130, MAX_WINDOW_S + 1)
    )
    assert worst == 86
    assert cover(T0, T0 + MAX_WINDOW_S - 1) == [(60, T0 + 60 * m) for m in range(60)]
    assert cover(T0 + 3, T0 + 3) == [(1, T0 + 3)]
    assert cover(T0 + 8, T0 + 21) == [(1, T0 + 8), (1, T0 + 9), (10, T0 + 10), (1, T0 + 20),
                                      (1, T0 + 21)]  # fmt: skip
    assert cover(5, 4) == []


def test_telemetry_bucket_keys_share_one_cluster_hash_tag() -> None:
    assert bucket_key(T0) == "kestrel:{tm}:s:1795857000"
    assert bucket_key(T0, 10) == "kestrel:{tm}:s10:1795857000"
    assert bucket_key(T0, 60) == "kestrel:{tm}:s60:1795857000"
