"""Unit tests for the reference benchmark's pure parts: redis-benchmark output, EVALSHA lines,
the shipped model's input rows."""

from __future__ import annotations

import numpy as np
import redis

from bench.refs import evalsha_args, manifest_rows, parse_csv
from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.events import Transaction
from kestrel.features import FEATURE_NAMES

REDIS7 = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"SET","158730.16","0.171","0.048","0.167","0.223","0.351","1.023"\n'
    '"HSET","152905.20","0.180","0.056","0.175","0.231","0.367","0.999"\n'
)


def test_parse_csv_reads_redis_7_rows_with_their_header() -> None:
    rows = parse_csv(REDIS7)
    assert set(rows) == {"SET", "HSET"}
    assert rows["SET"]["rps"] == 158730.16
    assert rows["HSET"]["p99_latency_ms"] == 0.367


def test_parse_csv_reads_headerless_redis_6_rows() -> None:
    assert parse_csv('"SET","123456.79"\n"GET","98765.43"\n') == {
        "SET": {"rps": 123456.79},
        "GET": {"rps": 98765.43},
    }


def test_parse_csv_keeps_custom_command_names_and_skips_progress_lines() -> None:
    text = (
        "SET: rps=0.0 (overall: 0.0) avg_msec=-nan\r"
        '"test","rps","avg_latency_ms"\n'
        '"EVALSHA abc 2 k1 k2 preview ref-__rand_int__ 1","15385.20","3.1"\n'
    )
    rows = parse_csv(text)
    assert list(rows) == ["EVALSHA abc 2 k1 k2 preview ref-__rand_int__ 1"]
    assert rows["EVALSHA abc 2 k1 k2 preview ref-__rand_int__ 1"]["rps"] == 15385.2


def test_parse_csv_returns_nothing_for_no_rows() -> None:
    assert parse_csv("") == {}
    assert parse_csv("ERROR: connection refused\n") == {}


def test_evalsha_args_are_the_stores_own_script_calls_in_preview_mode() -> None:
    store = RedisFeatureStore(redis.Redis())  # never connects: scripts hash locally
    probe = Transaction("p", "cust-1", "term-1", 42.5, 1_767_225_600_000)
    commands = evalsha_args(store, probe)
    assert set(commands) == {"customer", "terminal"}
    customer = commands["customer"]
    assert customer[:4] == ["EVALSHA", store._customer.sha, "1", "kestrel:{c:cust-1}:log"]
    assert customer[4:8] == ["preview", "ref-__rand_int__", "1767225600000", "4250"]
    terminal = commands["terminal"]
    assert terminal[:3] == ["EVALSHA", store._terminal.sha, "3"]
    assert terminal[6:8] == ["preview", "ref-__rand_int__"]
    assert all(isinstance(arg, str) for arg in customer + terminal)


def test_manifest_rows_draw_each_feature_from_its_reference_quantiles() -> None:
    grids = {
        name: {"quantiles": [float(i), float(i) + 0.5]} for i, name in enumerate(FEATURE_NAMES)
    }
    rows = manifest_rows({"reference_distributions": {"features": grids}}, 200)
    assert rows.shape == (200, len(FEATURE_NAMES)) and rows.dtype == np.float32
    for i in range(len(FEATURE_NAMES)):
        assert set(rows[:, i].tolist()) == {float(i), float(i) + 0.5}
