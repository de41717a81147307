"""Durable per-shard checkpoints of the Kinesis event-source mappings (SQLite in the run folder).

A checkpoint is the sequence number of the last record that, with every record before it,
is finished (succeeded or sent to the on-failure destination). A restart reads after it, so
no record is skipped; records after it may be delivered again (at least once, as on AWS).
A checkpoint of the form `@<epoch seconds>` pins a LATEST start to its first instant.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class CheckpointStore:
    """Checkpoints keyed by (mapping id, shard id), safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS checkpoints (mapping TEXT NOT NULL,"
                " shard TEXT NOT NULL,"
                " position TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (mapping, shard))"
            )

    def get(self, mapping: str, shard: str) -> str | None:
        """The stored position for a shard, or None when it was never checkpointed."""
        with self._lock:
            row = self._db.execute(
                "SELECT position FROM checkpoints WHERE mapping = ? AND shard = ?", (mapping, shard)
            ).fetchone()
        return None if row is None else str(row[0])

    def put(self, mapping: str, shard: str, position: str) -> None:
        """Store a shard's position (durably, before returning)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?) ON CONFLICT (mapping, shard) "
                "DO UPDATE SET position = excluded.position, updated = excluded.updated",
                (mapping, shard, position, time.time()),
            )

    def close(self) -> None:
        """Close the database (pending writes are already committed)."""
        with self._lock:
            self._db.close()
