"""Purchase propensity on the clickstream: each event's score and each user's latest one.

The propensity model (``kestrel-propensity``, trained by
``kestrel_training.train_propensity``) scores a click's feature vector
(`kestrel.click_features.CLICK_FEATURE_NAMES` order): the probability that the same user
buys within 30 minutes after the event. It is served by the fraud path's generic
`kestrel.scoring.Scorer` with the clickstream's feature names and hash, so a model trained
on other features is refused in the same way. This module imports no onnxruntime and no
redis: the model and the store reach it through ports.

Each user keeps one propensity, the one of their latest event in (event time, event id)
order (`latest_per_user`); a `PropensitySink` stores it so that an older event, arriving
late or replayed, never replaces a newer one, and the same event is never rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Propensity:
    """One event's purchase propensity and the model version that produced it."""

    user_id: str
    session_id: str
    event_id: str
    event_time_ms: int
    propensity: float
    model_version: str

    @property
    def order(self) -> tuple[int, str]:
        """Where the event stands in the user's (event time, event id) order."""
        return self.event_time_ms, self.event_id

    def as_json(self) -> str:
        """The stored document (compact JSON)."""
        return json.dumps(
            {
                "user_id": self.user_id,
                "session_id": self.session_id,
                "event_id": self.event_id,
                "event_time": self.event_time_ms,
                "propensity": self.propensity,
                "model_version": self.model_version,
            },
            separators=(",", ":"),
        )


def latest_per_user(propensities: Iterable[Propensity]) -> list[Propensity]:
    """The latest propensity of each user in (event time, event id) order, users in order of
    first appearance."""
    latest: dict[str, Propensity] = {}
    for item in propensities:
        held = latest.get(item.user_id)
        if held is None or item.order > held.order:
            latest[item.user_id] = item
    return list(latest.values())


class PropensitySink(Protocol):
    """Where users' latest propensities go (`kestrel.adapters.redis_propensity`).

    `publish` stores each given propensity unless the user already holds one of a later
    or the same event in (event time, event id) order; a store failure raises, so the
    caller fails the batch and it is retried (storing is idempotent).
    """

    def publish(self, propensities: Sequence[Propensity]) -> None:
        """Store each user's propensity unless a later (or the same) event's is stored.

        Args:
            propensities: At most one per user (see `latest_per_user`).
        """
        ...
