"""What a redrive run did (or, in a dry run, would do): counts, reasons, problems, a table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# Per-message outcomes; each message read ends in exactly one of them.
REDRIVEN, PARKED, STILL_POISON, EXPIRED, ERROR, SKIPPED = (
    "redriven",
    "parked",
    "still_poison",
    "expired",
    "error",
    "skipped",
)
OUTCOMES = (REDRIVEN, PARKED, STILL_POISON, EXPIRED, ERROR, SKIPPED)


@dataclass
class RedriveReport:
    """The figures of one redrive run over one or more queues.

    Every message read ends in exactly one outcome, so the figures add up:
    ``messages_read == messages_deleted + messages_left``,
    ``messages_deleted == redriven + parked`` and
    ``messages_left == still_poison + expired + errors + skipped``.
    In a dry run nothing is changed and the figures say what a real run would do.

    Attributes:
        queue: The queue (or queues) read, as the user named them.
        dry_run: True when nothing was changed.
        messages_read: Messages received and looked at (each counted once).
        redriven: Messages whose records were all re-put, then deleted.
        parked: Poison messages moved to the parking queue (sent there, then deleted).
        still_poison: Poison messages whose record still fails validation (left in the queue).
        expired: On-failure messages whose range is past the stream's retention (left).
        errors: Messages left because something failed (a put, a read, an unreadable body).
        skipped: Messages older than ``--since`` (left, untouched).
        records_reput: Records put back on their stream (accepted by PutRecords).
        records_failed: Records whose put kept failing (their messages are left).
        per_reason: Outcome counts per reason (the poison reason, or the on-failure
            condition such as ``RetryAttemptsExhausted``).
        problems: One line per message left because of an error or expiry, for the user.
        move_tasks: Handles of StartMessageMoveTask tasks started (SQS-source DLQs).
    """

    queue: str = ""
    dry_run: bool = False
    messages_read: int = 0
    redriven: int = 0
    parked: int = 0
    still_poison: int = 0
    expired: int = 0
    errors: int = 0
    skipped: int = 0
    records_reput: int = 0
    records_failed: int = 0
    per_reason: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    move_tasks: list[str] = field(default_factory=list)

    @property
    def messages_deleted(self) -> int:
        """Messages removed from the source queue (redriven or parked)."""
        return self.redriven + self.parked

    @property
    def messages_left(self) -> int:
        """Messages still in the source queue after the run."""
        return self.still_poison + self.expired + self.errors + self.skipped

    @property
    def exit_code(self) -> int:
        """0 when everything that could be redriven was; 1 when an error or expiry left some."""
        return 1 if self.errors or self.expired else 0

    def count(self, outcome: str, reason: str) -> None:
        """Record one message's outcome (one of `OUTCOMES`) under `reason`."""
        self.messages_read += 1
        attribute = "errors" if outcome == ERROR else outcome
        setattr(self, attribute, getattr(self, attribute) + 1)
        row = self.per_reason.setdefault(reason or "-", dict.fromkeys(OUTCOMES, 0))
        row[outcome] += 1

    def merge(self, other: RedriveReport) -> None:
        """Add `other`'s figures to this report (a run over several queues)."""
        self.queue = ", ".join(q for q in (self.queue, other.queue) if q)
        self.dry_run = self.dry_run or other.dry_run
        for name in (
            "messages_read",
            "redriven",
            "parked",
            "still_poison",
            "expired",
            "errors",
            "skipped",
            "records_reput",
            "records_failed",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, row in other.per_reason.items():
            mine = self.per_reason.setdefault(reason, dict.fromkeys(OUTCOMES, 0))
            for outcome, n in row.items():
                mine[outcome] += n
        self.problems.extend(other.problems)
        self.move_tasks.extend(other.move_tasks)

    def progress_line(self) -> str:
        """A one-line summary for a progress display."""
        return (
            f"{self.messages_read} read  {self.messages_deleted} deleted  "
            f"{self.messages_left} left  {self.records_reput} records re-put"
        )

    def table(self) -> str:
        """The summary table printed at the end of a run."""
        verb = "would be " if self.dry_run else ""
        rows: list[tuple[str, str]] = [
            ("queue", self.queue or "-"),
            ("messages read", str(self.messages_read)),
            (f"messages {verb}deleted", str(self.messages_deleted)),
            ("  redriven", str(self.redriven)),
            ("  parked", str(self.parked)),
            (f"messages {'that would stay' if self.dry_run else 'left'}", str(self.messages_left)),
            ("  still poison", str(self.still_poison)),
            ("  expired (past retention)", str(self.expired)),
            ("  errors", str(self.errors)),
            ("  skipped (before --since)", str(self.skipped)),
            (f"records {verb}re-put", str(self.records_reput)),
            ("records whose put failed", str(self.records_failed)),
        ]
        rows += [("SQS move task started", handle) for handle in self.move_tasks]
        width = max(len(label) for label, _ in rows)
        lines = []
        if self.dry_run:
            lines.append("DRY RUN: nothing was put, deleted or sent; figures are what would happen")
        lines += [f"{label.ljust(width)}  {value}" for label, value in rows]
        if self.per_reason:
            lines.append("")
            lines.append(_reason_table(self.per_reason.items()))
        return "\n".join(lines)


def _reason_table(items: Iterable[tuple[str, dict[str, int]]]) -> str:
    """Per-reason outcome counts as an aligned table."""
    header = ("reason", *OUTCOMES)
    body = [(reason, *(str(row.get(o, 0)) for o in OUTCOMES)) for reason, row in sorted(items)]
    widths = [max(len(cells[i]) for cells in (header, *body)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()
        for cells in (header, *body)
    )
