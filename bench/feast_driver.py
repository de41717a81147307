"""Feast's side of the Feast benchmark; runs in .venv-feast and imports only Feast and stdlib.

Usage: ``.venv-feast/bin/python -P bench/feast_driver.py SPEC.json`` (bench/feast.py runs it).
SPEC (written by bench/feast.py) names a folder, a Redis connection string, two entity tables
(customer and terminal features, Kestrel's FEATURE_NAMES between them, one row per entity)
and the entity rows to read. The driver makes a Feast repo in that folder
(feature_store.yaml, a parquet file source per view, a file registry), applies two entities
and two feature views, writes every row with ``write_to_online_store`` into Feast's Redis
online store, then times ``get_online_features(...).to_dict()`` for one entity row (a
customer and a terminal, every feature) per call, with the collector off as Kestrel's own
read loop has it. Prints one JSON object on stdout: versions, seconds, the timed calls in ns
and a sample response; progress goes to stderr.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# bench/feast.py would shadow the feast package when this script's folder leads sys.path
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import pandas as pd  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from feast import (  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
    Entity,
    FeatureStore,
    FeatureView,
    Field,
    FileSource,
    ValueType,
)
from feast.types import Float64  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

PACKAGES = ("feast", "redis", "hiredis", "pandas", "pyarrow", "protobuf", "gunicorn", "uvicorn")


def log(message: str) -> None:
    """Progress to stderr."""
    print(f"[feast-driver] {message}", file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    """Python and the packages Feast's read path runs on."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_repo(repo: Path, spec: dict[str, Any]) -> None:
    """feature_store.yaml (JSON is YAML) with the Redis online store and a file registry."""
    config = {
        "project": spec["project"],
        "registry": str(repo / "registry.db"),
        "provider": "local",
        "online_store": {"type": "redis", "connection_string": spec["connection_string"]},
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }
    (repo / "feature_store.yaml").write_text(json.dumps(config, indent=2) + "\n")


def frame(view: dict[str, Any], when: datetime) -> Any:
    """A view's rows as a DataFrame: join key, features, event_timestamp."""
    df = pd.DataFrame(view["rows"], columns=view["features"], dtype="float64")
    df.insert(0, view["join_key"], view["ids"])
    df["event_timestamp"] = pd.Timestamp(when)
    return df


def definitions(repo: Path, spec: dict[str, Any], frames: dict[str, Any]) -> list[Any]:
    """An entity, a parquet source and a feature view per table of the spec."""
    out: list[Any] = []
    for name, view in spec["views"].items():
        path = repo / f"{name}.parquet"
        frames[name].to_parquet(path, index=False)
        entity = Entity(name=name, join_keys=[view["join_key"]], value_type=ValueType.STRING)
        source = FileSource(
            name=f"{name}_source", path=str(path), timestamp_field="event_timestamp"
        )
        fields = [Field(name=f, dtype=Float64) for f in view["features"]]
        out += [
            entity,
            FeatureView(
                name=f"{name}_features",
                entities=[entity],
                ttl=timedelta(days=3650),
                schema=fields,
                source=source,
                online=True,
            ),
        ]
    return out


def time_reads(store: Any, spec: dict[str, Any], refs: list[str]) -> dict[str, Any]:
    """Time get_online_features(...).to_dict() per entity row; count rows with a null value."""
    rows = [
        {spec["views"][name]["join_key"]: key for name, key in zip(spec["views"], row, strict=True)}
        for row in spec["entity_rows"]
    ]
    warmup, times, nulls = int(spec["warmup"]), [], 0
    sample: dict[str, Any] = {}
    gc.collect()
    gc.disable()
    try:
        for i, row in enumerate(rows):
            t = time.perf_counter_ns()
            out = store.get_online_features(features=refs, entity_rows=[row]).to_dict()
            elapsed = time.perf_counter_ns() - t
            if i >= warmup:
                times.append(elapsed)
                nulls += any(values[0] is None for values in out.values())
                sample = sample or out
    finally:
        gc.enable()
    return {"read_ns": times, "warmup_calls": warmup, "rows_with_null": nulls, "sample": sample}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Make the repo, apply, write the rows, time the reads; the driver's JSON document."""
    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {int(spec["cpu"])})
    repo = Path(spec["repo"])
    repo.mkdir(parents=True, exist_ok=True)
    write_repo(repo, spec)
    when = datetime.fromtimestamp(float(spec["event_time_s"]), UTC)
    frames = {name: frame(view, when) for name, view in spec["views"].items()}
    t0 = time.perf_counter()
    store = FeatureStore(repo_path=str(repo))
    store.apply(definitions(repo, spec, frames))
    applied = time.perf_counter()
    log(f"applied {len(frames)} feature views in {applied - t0:.1f} s")
    for name, df in frames.items():
        store.write_to_online_store(f"{name}_features", df)
    written = time.perf_counter()
    counts = {name: len(df) for name, df in frames.items()}
    log(f"wrote {counts} rows to Feast's Redis online store in {written - applied:.1f} s")
    refs = [f"{name}_features:{f}" for name, v in spec["views"].items() for f in v["features"]]
    log(f"timing {len(spec['entity_rows']):,} get_online_features calls ({len(refs)} features)")
    reads = time_reads(store, spec, refs)
    return {
        "versions": versions(),
        "features": refs,
        "rows_written": counts,
        "apply_s": round(applied - t0, 3),
        "write_s": round(written - applied, 3),
        "cpu": sorted(os.sched_getaffinity(0)),
        **reads,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    print(json.dumps(run(spec), default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
