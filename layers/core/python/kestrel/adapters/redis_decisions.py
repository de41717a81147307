"""Decisions in Redis: one JSON string per transaction, kept for DECISION_TTL_S.

Key: ``kestrel:{d:<transaction_id>}`` (see `kestrel.adapters.redis_scripts`). The first
decision stored for a transaction wins (``SET NX``): a retried batch, even one scored after
a model swap, does not rewrite what was decided the first time. All writes of a batch go
in one pipeline (one round trip per node on a cluster).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kestrel.adapters.redis_scripts import decision_key
from kestrel.adapters.redis_wire import send_batch
from kestrel.decisions import DecisionRecord

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster


class RedisDecisions:
    """`DecisionSink` and `DecisionLookup` on Redis or Redis Cluster.

    Args:
        client: The container's Redis client.
        ttl_s: How long a decision is kept (seconds).
    """

    def __init__(self, client: Redis | RedisCluster, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s

    def publish(self, decisions: Sequence[DecisionRecord]) -> None:
        """Store each decision unless one is stored already; raise on any Redis error."""
        if not decisions:
            return
        ttl = self._ttl_s
        replies = send_batch(
            self._client,
            [("SET", decision_key(d.transaction_id), d.json, "NX", "EX", ttl)
             for d in decisions],
        )  # fmt: skip
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed

    def decision(self, transaction_id: str) -> DecisionRecord | None:
        """The stored decision for `transaction_id`, or None."""
        raw = self._client.get(decision_key(transaction_id))
        if raw is None:
            return None
        return DecisionRecord.from_dict(json.loads(raw))
