"""Rebuild the online store from the layout before entity logs (``:tx`` sorted sets).

The store used to keep, per customer, ``kestrel:{c:<id>}:tx`` (sorted set: transaction id,
event time) and ``:amt`` (hash: id -> cents), and per terminal ``kestrel:{t:<id>}:tx``,
``:fraud`` (sorted set) and ``:labels`` (hash: id -> label time). Today's scripts do not
read those keys. ``python -m kestrel_ops migrate-store`` replays every entity found in them
through today's store code (the same scripts the stream runs, in (time, id) order, so the
result equals a store that had streamed them), relinks the terminals' fraud labels, then
deletes the old keys. Running it twice changes nothing: the second run finds no old keys,
and a replayed transaction is a no-op. Stop the stream and the API while it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import redis

from kestrel.adapters.redis_features import RedisFeatureStore

OLD_CUSTOMERS = "kestrel:{c:*}:tx"
OLD_TERMINALS = "kestrel:{t:*}:tx"


@dataclass
class MigrationReport:
    """What a migration found and rebuilt."""

    customers: int = 0
    terminals: int = 0
    transactions: int = 0
    labels: int = 0

    def line(self) -> str:
        """One human line."""
        return (
            f"{self.customers} customers and {self.terminals} terminals rebuilt "
            f"({self.transactions} transaction entries, {self.labels} fraud labels)"
        )


def _entity_id(key: bytes, prefix: str) -> str:
    """``kestrel:{c:ID}:tx`` -> ``ID``."""
    return key.decode()[len(prefix) : -len("}:tx")]


def migrate(
    client: redis.Redis, progress: Callable[[MigrationReport], None] | None = None
) -> MigrationReport:
    """Rebuild every entity of the old layout with today's store; return what was done."""
    store = RedisFeatureStore(client)
    report = MigrationReport()
    for key in list(client.scan_iter(match=OLD_CUSTOMERS, count=1000)):
        customer = _entity_id(key, "kestrel:{c:")
        tag = f"kestrel:{{c:{customer}}}"
        members: list[tuple[bytes, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
        amounts: dict[bytes, bytes] = client.hgetall(f"{tag}:amt")  # type: ignore[assignment]
        rows = [(m.decode(), int(t), int(amounts.get(m, b"0"))) for m, t in members]
        store.load_history("customer", customer, rows)
        report.customers += 1
        report.transactions += len(rows)
        client.delete(key, f"{tag}:amt")
        if progress:
            progress(report)
    for key in list(client.scan_iter(match=OLD_TERMINALS, count=1000)):
        terminal = _entity_id(key, "kestrel:{t:")
        tag = f"kestrel:{{t:{terminal}}}"
        members = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
        store.load_history("terminal", terminal, [(m.decode(), int(t), 0) for m, t in members])
        old = f"{tag}:labels"  # a hash then, a sorted set now: read, drop, relink
        labels: dict[bytes, bytes] = {}
        if client.type(old) == b"hash":
            labels = client.hgetall(old)  # type: ignore[assignment]
        client.delete(key, f"{tag}:fraud", *([old] if labels else []))
        store.link_terminal_labels(terminal, [(t.decode(), int(at)) for t, at in labels.items()])
        report.terminals += 1
        report.transactions += len(members)
        report.labels += len(labels)
        if progress:
            progress(report)
    return report


def add_parser(sub: Any) -> None:
    """Add the ``migrate-store`` command to the subparsers of ``python -m kestrel_ops``."""
    cmd = sub.add_parser(
        "migrate-store", help="rebuild the online store from the layout before entity logs"
    )
    cmd.add_argument("--redis-url", default=None, help="default: the local stack's Redis")


def run_migrate(args: argparse.Namespace, redis_url: str, out: TextIO, err: TextIO) -> int:
    """Run the migration against `redis_url`, with progress on `err`; return the exit code."""
    client = redis.Redis.from_url(args.redis_url or redis_url)

    def show(report: MigrationReport) -> None:
        done = report.customers + report.terminals
        if done % 500 == 0:
            err.write(f"\r{report.line()}")
            err.flush()

    report = migrate(client, progress=show)
    err.write("\n")
    out.write(f"migrate-store: {report.line()}\n")
    return 0
