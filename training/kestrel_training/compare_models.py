"""``make compare-models``: champion against the shadow-scored challenger on the live window.

It reads the stack's S3 event log (``events/transactions/`` and ``events/labels/``, layout in
`kestrel.adapters.s3_event_log`): the transactions that carry both a ``score`` (the
champion's, ``model_version``) and a ``shadow_score`` (the challenger's,
``shadow_model_version``), joined with their labels (a transaction without a label yet is
left out). The pair compared is the one that scored the newest logged transaction, unless
``--champion`` / ``--challenger`` name one. It prints both models' AP and CP@100 with
bootstrap intervals and a verdict (`kestrel_training.shadow_eval`), writes the result as
JSON (``--json``, default ``.run/compare-models/<champion>-vs-<challenger>-<UTC>.json``)
and, when the challenger is a version of the local MLflow registry, records a decisive
verdict there, where ``make promote`` finds it (`kestrel_training.promotion`).

    python -m kestrel_training.compare_models [--stack-name kestrel | --bucket B]
        [--since 2018-08-01] [--until 2018-08-15] [--resamples 1000] [--seed 0]

Exit codes: 0 (whatever the verdict), 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError

from kestrel.features import DAY_MS
from kestrel.settings import LocalSettings, SettingsError
from kestrel_training import tracking
from kestrel_training.shadow_eval import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MIN_FRAUDS,
    DEFAULT_RESAMPLES,
    NOT_ENOUGH,
    VERDICTS,
    Comparison,
    Interval,
    compare,
)

TX_FIELDS = ("transaction_id", "customer_id", "event_time", "score", "model_version",
             "shadow_score", "shadow_model_version")  # fmt: skip
PAIR = ["model_version", "shadow_model_version"]


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [str(item["Key"]) for item in page.get("Contents", [])]
    return keys


def _partitions(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/"
    )
    return sorted(str(p["Prefix"]) for page in pages for p in page.get("CommonPrefixes", []))


def _lines(s3: Any, bucket: str, key: str) -> list[Any]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return [orjson.loads(line) for line in gzip.decompress(body).splitlines() if line]


def read_transactions(
    s3: Any, bucket: str, since_ms: int | None, until_ms: int | None, prefix: str = "events"
) -> pd.DataFrame:
    """The logged transactions in [since, until) with the fields compared (first of repeats)."""
    root = f"{prefix}/transactions/"
    first = None if since_ms is None else _day(since_ms)
    last = None if until_ms is None else _day(until_ms - 1)
    columns: dict[str, list[Any]] = {name: [] for name in TX_FIELDS}
    for partition in _partitions(s3, bucket, root):
        day = partition[len(root) :].removeprefix("dt=").rstrip("/")
        if (first is not None and day < first) or (last is not None and day > last):
            continue
        for key in _keys(s3, bucket, partition):
            for row in _lines(s3, bucket, key):
                moment = int(row["event_time"])
                if (since_ms is not None and moment < since_ms) or (
                    until_ms is not None and moment >= until_ms
                ):
                    continue
                for name in TX_FIELDS:
                    columns[name].append(row.get(name))
    frame = pd.DataFrame(columns)
    return frame.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)


def read_labels(s3: Any, bucket: str, prefix: str = "events") -> pd.DataFrame:
    """transaction_id → is_fraud (0/1) from the label log (the earliest label of each wins)."""
    rows = [
        (str(row["transaction_id"]), int(bool(row["is_fraud"])), int(row["label_time"]))
        for key in _keys(s3, bucket, f"{prefix}/labels/")
        for row in _lines(s3, bucket, key)
    ]
    labels = pd.DataFrame(rows, columns=["transaction_id", "is_fraud", "label_time"])
    labels = labels.sort_values(["label_time", "transaction_id"], kind="stable")
    return labels.drop_duplicates("transaction_id", keep="first")[["transaction_id", "is_fraud"]]


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms // DAY_MS * DAY_MS / 1000, tz=UTC).date().isoformat()


def pick_pair(
    transactions: pd.DataFrame, champion: str | None, challenger: str | None
) -> tuple[str, str] | None:
    """The (champion, challenger) compared: as asked, else the newest shadow-scored row's."""
    both = transactions.dropna(subset=["score", "shadow_score"])
    if champion is not None:
        both = both[both["model_version"].astype(str) == champion]
    if challenger is not None:
        both = both[both["shadow_model_version"].astype(str) == challenger]
    if both.empty:
        return None
    newest = both.loc[both["event_time"].astype("int64").idxmax()]
    return str(newest["model_version"]), str(newest["shadow_model_version"])


def labelled_window(
    transactions: pd.DataFrame, labels: pd.DataFrame, pair: tuple[str, str]
) -> pd.DataFrame:
    """The pair's shadow-scored transactions that have a label, with ``is_fraud``."""
    scored = transactions.dropna(subset=["score", "shadow_score"])
    mine = (scored["model_version"].astype(str) == pair[0]) & (
        scored["shadow_model_version"].astype(str) == pair[1]
    )
    return scored[mine].merge(labels, on="transaction_id", how="inner")


def _interval(i: Interval, signed: bool = False) -> str:
    fmt = "+.3f" if signed else ".3f"
    if i.value != i.value:  # NaN
        return "n/a"
    if i.low != i.low:
        return f"{i.value:{fmt}} [n/a]"
    return f"{i.value:{fmt}} [{i.low:{fmt}}, {i.high:{fmt}}]"


def _v(version: str) -> str:
    """A version as people read it: v7 for a registry number, the name otherwise."""
    return f"v{version}" if version.isdigit() else version


def render(result: Comparison, scored_rows: Counter[tuple[str, str]]) -> str:
    """The comparison as text for people."""
    c = result
    share = f"{c.confidence:.0%}"
    lines = [
        f"compare-models: champion {_v(c.champion.version)} vs challenger "
        f"{_v(c.challenger.version)} on the labelled live window",
        f"  window: {c.first_day or '-'} .. {c.last_day or '-'} ({c.days} days), {c.rows:,} "
        f"labelled transactions scored by both, {c.frauds:,} frauds, {c.cards:,} cards",
    ]
    others = [f"{_v(a)} vs {_v(b)}: {n:,}" for (a, b), n in sorted(scored_rows.items())]
    if len(others) > 1:
        lines.append(f"  shadow-scored rows by pair (labelled or not): {'; '.join(others)}")
    names = {
        "champion": f"champion {_v(c.champion.version)}",
        "challenger": f"challenger {_v(c.challenger.version)}",
        "difference": "difference",
    }
    width = max(len(n) for n in names.values())
    cells = {
        "champion": (c.champion.average_precision, c.champion.card_precision_100, False),
        "challenger": (c.challenger.average_precision, c.challenger.card_precision_100, False),
        "difference": (c.ap_difference, c.cp100_difference, True),
    }
    lines.append(f"  {'model':<{width}}  {'AP [' + share + ' CI]':<26}  CP@100 [{share} CI]")
    for role, (ap, cp, signed) in cells.items():
        lines.append(
            f"  {names[role]:<{width}}  {_interval(ap, signed):<26}  {_interval(cp, signed)}"
        )
    lines.append(
        f"  bootstrap: {c.resamples:,} resamples of cards (seed {c.seed}), percentile intervals"
    )
    lines.append(f"verdict: {VERDICTS[c.verdict]} ({c.reason})")
    return "\n".join(lines)


def _time_ms(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 date or time (e.g. 2018-08-01)") from None
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m kestrel_training.compare_models",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--stack-name", default=None, help="default: KESTREL_STACK_NAME")
    p.add_argument("--template", "-t", default="template.yaml")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--bucket", default=None, help="read this event-log bucket (not the stack's)")
    p.add_argument("--since", default=None, help="first event time (ISO-8601, UTC)")
    p.add_argument("--until", default=None, help="end event time, excluded (ISO-8601, UTC)")
    p.add_argument("--champion", default=None, help="champion version (default: newest pair's)")
    p.add_argument("--challenger", default=None, help="challenger version (default: newest)")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-frauds", type=int, default=DEFAULT_MIN_FRAUDS)
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
    p.add_argument("--json", type=Path, default=None, help="where to write the result")
    p.add_argument("--tracking-dir", type=Path, default=None, help="MLflow store (mlruns/)")
    p.add_argument("--no-record", action="store_true", help="record nothing in the registry")
    return p


def _bucket(args: argparse.Namespace, settings: LocalSettings) -> tuple[Any, str]:
    from kestrel_local.aws import AwsClients
    from kestrel_local.provision import bind
    from kestrel_local.template import TemplateError

    clients = AwsClients(settings.endpoint, region=args.region)
    if args.bucket:
        return clients.client("s3"), str(args.bucket)
    try:
        app, _ = bind(args.template, clients, args.stack_name or settings.stack_name)
    except (TemplateError, OSError) as exc:
        raise ValueError(f"--template {args.template}: {exc}") from None
    if "EventLogBucket" not in app.stack.physical:
        raise ValueError(f"--template {args.template}: no EventLogBucket resource")
    return clients.client("s3"), str(app.stack.physical["EventLogBucket"].ref)


def _record(args: argparse.Namespace, result: Comparison) -> str:
    """Record a decisive verdict in the local registry; say what happened."""
    if args.no_record or result.verdict == NOT_ENOUGH:
        return "not recorded in the registry"
    folder = args.tracking_dir or os.environ.get("KESTREL_MLRUNS_DIR") or tracking.DEFAULT_DIR
    if not (Path(folder) / "mlflow.db").exists():
        return f"not recorded: no MLflow registry in {folder}"
    from kestrel_training.promotion import record_live_verdict

    version = record_live_verdict(tracking.configure(folder), result)
    if version is None:
        return f"not recorded: v{result.challenger.version} is not a registry version"
    return f"recorded on {tracking.MODEL_NAME} v{version} (make promote VERSION={version} reads it)"


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Compare, print, write the JSON, record the verdict; the exit code."""
    if args.resamples < 1 or args.min_frauds < 0 or not 0 < args.confidence < 1:
        raise ValueError("--resamples must be >= 1, --min-frauds >= 0, 0 < --confidence < 1")
    settings = LocalSettings.from_env()
    s3, bucket = _bucket(args, settings)
    since, until = _time_ms(args.since), _time_ms(args.until)
    transactions = read_transactions(s3, bucket, since, until)
    pair = pick_pair(transactions, args.champion, args.challenger)
    if pair is None:
        err.write(
            f"compare-models: no transaction in s3://{bucket}/events/transactions/ carries both "
            "scores: set a challenger (python -m kestrel_training.registry shadow --bucket "
            f"{bucket}) and stream some traffic first\n"
        )
        return 0
    window = labelled_window(transactions, read_labels(s3, bucket), pair)
    result = compare(
        window, pair[0], pair[1], args.resamples, args.seed, args.min_frauds, args.confidence
    )
    both = transactions.dropna(subset=["score", "shadow_score"])
    scored = Counter(zip(both["model_version"].astype(str),
                         both["shadow_model_version"].astype(str), strict=True))  # fmt: skip
    out.write(render(result, scored) + "\n")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.json or (
        Path(settings.run_dir) / "compare-models" / f"{pair[0]}-vs-{pair[1]}-{stamp}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bucket": bucket, **result.as_dict()}, indent=2) + "\n")
    out.write(f"result: {path}; {_record(args, result)}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        return run(args, sys.stdout, sys.stderr)
    except (ValueError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:
        print(f"error: the AWS endpoint failed: {exc}\nhint: is the stack up? (make up)",
              file=sys.stderr)  # fmt: skip
        return 2


if __name__ == "__main__":
    sys.exit(main())
