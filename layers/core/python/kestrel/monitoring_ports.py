"""Monitoring ports: stream telemetry, dead-letter depths and drift, as the domain needs them.

The stream paths write telemetry, the API and `/metrics` read it back, and the drift check
reads served windows and publishes a status; the adapters under `kestrel.adapters`
implement these `Protocol`s (Redis, SQS, S3), and unit tests pass in-memory doubles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kestrel.drift import ScoredWindow
    from kestrel.telemetry import BatchFigures, TelemetryWindow


class TelemetrySink(Protocol):
    """Where the stream paths add each batch's figures (`kestrel.telemetry`).

    `record` adds the counters to the bucket of `figures.second` and to all-time totals,
    the histograms to the bucket, keeps the largest of each maximum, and remembers the model
    version and the time of the last batch. Per attempt (a retried batch counts again), not
    exactly once. It may raise: the paths log the error, telemetry never fails a batch.
    """

    def record(self, figures: BatchFigures) -> None:
        """Add one batch's figures (dated by `figures.second`)."""
        ...


class TelemetrySource(Protocol):
    """Reads back what `TelemetrySink.record` wrote, for snapshots (the API, /metrics).

    A read costs a bounded number of store calls whatever the window (up to an hour): an
    implementation keeps rollups of the per-second buckets rather than reading each second.
    """

    def read(self, first_s: int, last_s: int) -> tuple[TelemetryWindow, dict[str, str]]:
        """The window of seconds `first_s`..`last_s` (inclusive) and the all-time totals.

        The window's figures equal its per-second buckets combined
        (`kestrel.telemetry.combine`), with one events count per second, oldest first;
        totals map field -> text. Store errors (connection, timeout) raise unchanged.
        """
        ...


class QueueDepths(Protocol):
    """How many messages wait in the dead-letter queues (SQS ApproximateNumberOfMessages)."""

    def depths(self) -> dict[str, int | None]:
        """Depth by queue role (``poison``, ``on_failure``).

        A queue that is not configured or could not be read is None (an implementation
        logs why, and never raises).
        """
        ...


class DriftStatusReader(Protocol):
    """The latest drift status the drift job published.

    Its key and JSON shape are documented in `kestrel.adapters.redis_telemetry`.
    """

    def latest(self) -> dict[str, Any] | None:
        """The latest status, a JSON object with at least ``status``; None when there is none.

        Raises:
            Exception: The store cannot be read, unchanged.
        """
        ...


class DriftWindowSource(Protocol):
    """What the stream served in a time window, for the drift check (`kestrel.drift`).

    `read` returns the feature rows of the transactions whose event time is in
    [start_ms, end_ms): each transaction once (duplicates by transaction id dropped), only
    rows computed with `feature_set_hash` (others are counted, not returned), and the scores
    of the rows that `model_version` scored. A source may read a sample of a large window;
    the window it returns says how much it read. Failures raise, unchanged.
    """

    def read(
        self, start_ms: int, end_ms: int, feature_set_hash: str, model_version: str
    ) -> ScoredWindow:
        """The window's feature rows (FEATURE_NAMES order) and scores.

        Args:
            start_ms: First event time of the window (epoch ms, inclusive).
            end_ms: End of the window (epoch ms, exclusive).
            feature_set_hash: The feature definitions the reference was computed with.
            model_version: The model whose scores are compared with its reference.
        """
        ...

    def latest_event_ms(self) -> int | None:
        """Just after the newest logged event time (a window end for replayed data), or None."""
        ...
