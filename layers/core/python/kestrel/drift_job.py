"""One drift check end to end: window, reference, report, and where the report goes.

`DriftJob.run` loads the active model manifest, reads the window that ends at the given
moment (``now``, ``latest``: just after the newest logged event, an ISO-8601 time or epoch
ms) from the `DriftWindowSource`, compares it with the manifest's reference
(`kestrel.drift.check`), writes the JSON report to every report sink and publishes it as
the latest status. The scheduled DriftFunction and ``python -m kestrel_ops drift`` both run
it; `render_table` is the human-readable form.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from kestrel.drift import (
    SCORE,
    Comparison,
    DriftReport,
    DriftStatistics,
    Reference,
    Thresholds,
    check,
)
from kestrel.features import DAY_MS
from kestrel.monitoring_ports import DriftWindowSource


class DriftStatusSink(Protocol):
    """Where the latest drift status goes (`kestrel.adapters.redis_telemetry.RedisDriftStatus`)."""

    def publish(self, status: Mapping[str, Any], ttl_s: int | None = None) -> None:
        """Store `status` (the report's JSON) as the latest one.

        Args:
            status: The report as JSON, with a string ``status``.
            ttl_s: Expiry, so a job that stopped running leaves no stale status behind.
        """
        ...


class DriftReportSink(Protocol):
    """Where full reports are kept (S3, a local file)."""

    def write(self, report: Mapping[str, Any]) -> str:
        """Store one report; return where it went (an S3 URI or a path).

        Args:
            report: The report as JSON (`kestrel.drift.DriftReport.as_dict`).
        """
        ...


def window_end_ms(end: str | int | None, now_ms: int, source: DriftWindowSource) -> int:
    """The window's end: now, just after the latest logged event, or an explicit time."""
    if end is None or end == "now":
        return now_ms
    if isinstance(end, int):
        return end
    if end == "latest":
        latest = source.latest_event_ms()
        return latest if latest is not None else now_ms
    try:
        moment = datetime.fromisoformat(end)
    except ValueError:
        raise ValueError(
            f"window end {end!r}: use now, latest, or an ISO-8601 time (2018-08-14T00:00:00Z)"
        ) from None
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass
class DriftJob:
    """The drift check with its ports wired (see the module docstring)."""

    source: DriftWindowSource
    statistics: DriftStatistics
    manifest: Callable[[], Mapping[str, Any]]
    status: DriftStatusSink | None = None
    reports: Sequence[DriftReportSink] = ()
    window_ms: int = DAY_MS
    status_ttl_s: int | None = None
    limits: Thresholds = field(default_factory=Thresholds)
    clock: Callable[[], float] = time.time

    def run(self, end: str | int | None = None) -> tuple[DriftReport, list[str]]:
        """Check the window ending at `end`; return the report and where it was written."""
        now_ms = int(self.clock() * 1000)
        reference = Reference.from_manifest(self.manifest())
        end_ms = window_end_ms(end, now_ms, self.source)
        window = self.source.read(
            end_ms - self.window_ms, end_ms, reference.feature_set_hash, reference.model_version
        )
        report = check(window, reference, self.statistics, now_ms, self.limits)
        body = report.as_dict()
        locations = [sink.write(body) for sink in self.reports]
        if self.status is not None:
            self.status.publish(body, self.status_ttl_s)
        return report, locations


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(name: str, c: Comparison) -> str:
    p = "-" if c.ks_p is None else f"{c.ks_p:.1e}"
    return (
        f"{name:<36} {c.rows:>8} {_number(c.psi):>7} {_number(c.ks_stat):>7} {p:>8}  "
        f"{c.status.value:<7} {c.note or ''}".rstrip()
    )


def render_table(report: DriftReport) -> str:
    """The report as a table for people: one line per feature and the score."""
    body = report.as_dict()
    window = body["window"]
    lines = [
        f"drift: {report.status.value.upper()}  model {report.model_version}  "
        f"checked {body['checked_at']}",
        f"window {window['from']} .. {window['to']}: {window['rows']} rows "
        f"({window['score_rows']} scored by this model, {window['skipped_rows']} of another "
        f"feature set), {window['objects_read']}/{window['objects_total']} log objects read",
        f"{'feature':<36} {'rows':>8} {'psi':>7} {'ks_D':>7} {'ks_p':>8}  status",
    ]
    lines += [_row(name, c) for name, c in report.features.items()]
    lines.append(_row(SCORE, report.score))
    limits = report.limits
    lines.append(
        f"drift: PSI > {limits.psi_drift} or (KS p < {limits.ks_alpha} and D >= "
        f"{limits.ks_drift_d}); watch: PSI > {limits.psi_watch}; "
        f"drifted: {', '.join(report.drifted) or 'none'}"
    )
    return "\n".join(lines)
