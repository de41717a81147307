"""Clickstream parity: simulated clicks through the real path, online features vs offline.

The path is the one production uses: producer → Kinesis (the local endpoint) → the local
Lambda runtime running ClickstreamFunction from template.yaml → Redis. Each event's online
feature vector is read back from the S3 event log (``events/clicks/``), where the handler
logs it, and compared with `click_offline_features` over the same events. A share of the
events is sent twice, the copy after later events of the same user: a replay must log the
same vector and count once.

    python -m kestrel_training.parity --mode clickstream --events 100000
"""

from __future__ import annotations

import gzip
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from kestrel.adapters.glue_registry import GlueSchemaRegistry
from kestrel.click_features import CLICK_FEATURE_NAMES, CLICK_FEATURE_SET_HASH
from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.provision import bind
from kestrel_local.runtime import LocalRuntime
from kestrel_training.avro_encoding import avro_encoders
from kestrel_training.click_offline import click_offline_features
from kestrel_training.click_simulator import ClickSimulatorConfig, simulate_clicks
from kestrel_training.parity import (
    RELATIVE_TOLERANCE,
    ParityReport,
    _parity_redis_url,
    _reached,
    _wait,
)
from kestrel_training.producer import produce

ROOT = Path(__file__).resolve().parents[2]
DUPLICATE_SHARE = 0.01
DUPLICATE_LAG = 500  # records between an event and its copy


@dataclass
class ClickParityReport(ParityReport):
    """A parity report that also says how many records were sent twice."""

    duplicates: int = 0


def simulated_clicks(events: int, seed: int, users: int = 2000) -> pd.DataFrame:
    """The first `events` clicks of a simulation long enough to hold them."""
    days = max(3, math.ceil(events / (7.0 * users)) + 1)
    sim = simulate_clicks(ClickSimulatorConfig(n_users=users, n_days=days, seed=seed))
    return sim.events.head(events).reset_index(drop=True)


def with_duplicates(clicks: pd.DataFrame, seed: int) -> list[dict[str, Any]]:
    """The clicks as producer records (NaN as null), a share sent again `DUPLICATE_LAG` later."""
    records = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in clicks.to_dict("records")
    ]
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(len(records), size=int(len(records) * DUPLICATE_SHARE), replace=False))
    out: list[dict[str, Any]] = []
    waiting: dict[int, list[dict[str, Any]]] = {}
    for i, record in enumerate(records):
        out.append(record)
        out += waiting.pop(i, [])
        if i in chosen:
            waiting.setdefault(i + DUPLICATE_LAG, []).append(record)
    for late in waiting.values():
        out += late
    return out


def replay(
    records: list[dict[str, Any]], settings: LocalSettings, log: Callable[[str], None]
) -> dict[str, list[float]]:
    """Send the records through the local stack; return the logged vectors by event id."""
    clients = AwsClients(settings.endpoint)
    redis_url = _parity_redis_url(settings.redis)
    redis.Redis.from_url(redis_url).flushdb()
    stack = f"clicks{uuid.uuid4().hex[:8]}"
    app, _ = bind(ROOT / "template.yaml", clients, stack, {"RedisUrl": redis_url}, create=True)
    stream = app.stack.physical["ClickstreamStream"].ref
    runtime = LocalRuntime(
        app,
        clients,
        settings,
        only=["ClickstreamFunction"],
        log_dir=Path(settings.run_dir) / "logs" / stack,
    )
    (mapping,) = runtime.kinesis
    encoders = avro_encoders(GlueSchemaRegistry(clients.client("glue"), stack))
    runtime.start()
    try:
        chunk = 20_000
        for start in range(0, len(records), chunk):
            part = records[start : start + chunk]
            produce(
                part,
                stream,
                client=clients.client("kinesis"),
                encoder=encoders["clicks"],
                partition_key="user_id",
            )
            sent = start + len(part)
            _wait(_reached(mapping.stats, sent), "clicks to apply")
            log(f"parity: {sent:,} of {len(records):,} clickstream records applied")
    finally:
        runtime.stop()
    return read_logged_clicks(clients, app.stack.physical["EventLogBucket"].ref)


def read_logged_clicks(clients: AwsClients, bucket: str) -> dict[str, list[float]]:
    """event_id → logged feature vector, from the event log (duplicates must agree)."""
    s3 = clients.client("s3")
    features: dict[str, list[float]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="events/clicks/"
    ):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for line in gzip.decompress(body).splitlines():
                row = json.loads(line)
                previous = features.setdefault(row["event_id"], row["features"])
                if previous != row["features"]:
                    raise AssertionError(f"{row['event_id']}: logged twice, differently")
    return features


def compare(online: dict[str, list[float]], offline: pd.DataFrame, report: ParityReport) -> None:
    """Count every feature value that differs (counts exactly, ratios within 1e-9 relative)."""
    by_feature: Counter[str] = Counter()
    for row in offline.itertuples(index=False):
        got = online.get(row.event_id)
        if got is None:
            report.missing_online += 1
            continue
        report.compared += 1
        for name, a, b in zip(CLICK_FEATURE_NAMES, got, tuple(row)[1:], strict=True):
            if not math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0):
                by_feature[name] += 1
                if len(report.examples) < 10:
                    report.examples.append(
                        {"event_id": row.event_id, "feature": name, "online": a, "offline": b}
                    )
    report.mismatches = sum(by_feature.values()) + report.missing_online
    report.mismatches_by_feature = dict(by_feature)


def run(
    events: int, seed: int, settings: LocalSettings, log: Callable[[str], None] = print
) -> ClickParityReport:
    """Simulate clicks, replay them (with duplicates) through the local stack, compare."""
    started = time.monotonic()
    clicks = simulated_clicks(events, seed)
    records = with_duplicates(clicks, seed)
    log(
        f"parity: {len(clicks):,} clickstream events of {clicks['user_id'].nunique():,} users, "
        f"{len(records) - len(clicks):,} sent twice"
    )
    online = replay(records, settings, log)
    report = ClickParityReport(
        events=len(clicks),
        feature_set_hash=CLICK_FEATURE_SET_HASH,
        duplicates=len(records) - len(clicks),
    )
    compare(online, click_offline_features(clicks), report)
    report.seconds = round(time.monotonic() - started, 1)
    return report
