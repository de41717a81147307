"""The chaos run's configuration and report: the figures, the checks and the final table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run's size and faults."""

    events: int = 100_000  # good transactions
    seed: int = 7
    poison_rate: float = 0.005  # poison records per good event
    duplicate_rate: float = 0.1  # share of PutRecords calls sent twice
    crash_rate: float = 0.01  # share of batches (invocations) that crash
    outage_s: float = 10.0  # redis-server down
    outage_at: float = 0.25  # share of the records checkpointed when Redis is killed
    restart_at: float = 0.6  # share checkpointed when the runtime gets SIGTERM
    retry_backoff_s: float = 0.2  # the runtime's first retry delay (doubles per retry)
    drain_timeout_s: float = 900.0

    @property
    def poison(self) -> int:
        """Poison records mixed into the stream."""
        return max(1, round(self.events * self.poison_rate))


@dataclass
class Stage:
    """Timings of the run's phases (seconds since the start)."""

    name: str
    at_s: float


@dataclass
class ChaosReport:
    """What the chaos run sent, what happened to it and what the stores hold at the end.

    The figures and how they add up (each is a check):

    - sent = good + poison + duplicates: records PutRecords accepted from the producer,
      where duplicates are the records of the calls sent a second time.
    - processed: distinct good events in their customer's and terminal's sets in Redis;
      lost = good - processed.
    - applied_twice: feature keys whose content differs from a clean pass (the good events
      applied once, in order, to another database), plus decisions beyond one per event.
    - poisoned: distinct poison records in the poison DLQ with the reason their kind must
      get. The DLQ may hold more messages than poison records: a poison record in a batch
      that is retried (crash, outage, restart) is parked again; every message is one of
      the handler's poison sends.
    - The handler's view (the fixture's wrapper logs it): every record delivered to the
      function ended as exactly one of: applied (acknowledged), duplicate suppressed
      (already applied), a per-record failure, a record of a store call that raised (Redis
      down), a poison send (or a failed one), or a record after the point where an injected
      crash ended the batch. Their sum equals the records delivered, and invocations equal
      the runtime's invokes.
    - applied (reply lost) = processed - applied (acknowledged): first applications whose
      reply never came back because Redis was killed mid-call; their next delivery counted
      as a duplicate. At most the records of the store calls that raised.
    - retried: the runtime's retries (a bisection is not a retry, as on AWS).
    - redriven: records the redrive tool re-put from the on-failure queue, which must equal
      the records the runtime discarded there (sum of the messages' batchSize).
    """

    config: ChaosConfig
    # The input.
    good: int = 0
    poison: int = 0
    duplicates: int = 0  # records put a second time by a duplicated PutRecords call
    duplicates_of_poison: int = 0
    sent: int = 0  # records PutRecords accepted from the producer
    # The stream (event-source mapping counters, summed over the runtime's lifetimes).
    esm: Counter[str] = field(default_factory=Counter)
    runtime_starts: int = 0
    # The on-failure queue and the redrive.
    on_failure_messages: int = 0
    on_failure_records: int = 0
    redrive_messages: int = 0
    redriven: int = 0
    redrive_errors: int = 0
    on_failure_left: int = 0
    poison_redrive_still_poison: int = 0
    poison_redrive_reput: int = 0
    # The handler, as the wrapper saw it.
    invocations: int = 0
    delivered: int = 0  # records in those invocations
    applied_acknowledged: int = 0
    duplicates_suppressed: int = 0
    record_failures: int = 0
    store_calls_raised: int = 0
    records_in_raised_calls: int = 0
    poison_sends: int = 0
    poison_send_failures: int = 0
    crashes_raised: int = 0
    crashes_exited: int = 0
    skipped_by_crashes: int = 0  # records of crashed batches the handler never reached
    # The end state.
    processed: int = 0  # distinct good events whose features are in Redis
    lost: int = 0
    applied_twice: int = 0
    state_keys: int = 0
    state_mismatches: list[str] = field(default_factory=list)
    decisions: int = 0
    poison_dlq_messages: int = 0
    poisoned: int = 0  # distinct poison records found in the DLQ with the right reason
    poison_wrong_reason: list[str] = field(default_factory=list)
    poison_missing: int = 0
    unexpected_dlq: int = 0
    redis_outage_s: float = 0.0
    redis_killed_at_checkpointed: int = 0
    restart_at_checkpointed: int = 0
    stages: list[Stage] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def delivered_accounted(self) -> int:
        """What became of each delivered record, summed (must equal `delivered`)."""
        return (
            self.applied_acknowledged
            + self.duplicates_suppressed
            + self.record_failures
            + self.records_in_raised_calls
            + self.poison_sends
            + self.poison_send_failures
            + self.skipped_by_crashes
        )

    @property
    def applied_unacknowledged(self) -> int:
        """First applications whose reply was lost (Redis killed mid-call): later duplicates."""
        return self.processed - self.applied_acknowledged

    def checks(self) -> list[tuple[str, bool]]:
        """Every invariant and sum, with whether it holds."""
        return [
            ("good events lost == 0", self.lost == 0),
            ("good events applied twice == 0 (state == a clean pass)", self.applied_twice == 0),
            ("one decision per good event", self.decisions == self.good),
            (
                "poison records in the DLQ with their reason == poison sent",
                self.poisoned == self.poison,
            ),
            ("no DLQ message for a good or unknown record", self.unexpected_dlq == 0),
            (
                "sent == good + poison + duplicates",
                self.sent == self.good + self.poison + self.duplicates,
            ),
            (
                "0 <= applied with its reply lost to the outage <= records of raised store calls",
                0 <= self.applied_unacknowledged <= self.records_in_raised_calls,
            ),
            (
                "invocations the handler saw == the runtime's invokes",
                self.invocations == self.esm["invokes"],
            ),
            (
                "delivered == applied (ack) + duplicates suppressed + record failures"
                " + records of raised store calls + poison sends + skipped by crashes",
                self.delivered == self.delivered_accounted,
            ),
            (
                "on-failure records == records the runtime discarded",
                self.on_failure_records == self.esm["discarded"],
            ),
            ("redriven == on-failure records", self.redriven == self.on_failure_records),
            ("on-failure queue empty after the redrive", self.on_failure_left == 0),
            ("redrive: no errors or expired ranges", self.redrive_errors == 0),
            (
                "poison redrive: every message still poison, none re-put",
                self.poison_redrive_reput == 0
                and self.poison_redrive_still_poison == self.poison_dlq_messages,
            ),
            (
                "poison DLQ messages == poison sends the handler made",
                self.poison_dlq_messages == self.poison_sends,
            ),
            (
                "poison DLQ messages >= poison records on the stream",
                self.poison_dlq_messages >= self.poison + self.duplicates_of_poison,
            ),
            ("the faults happened: Redis outage", self.redis_outage_s > 0),
            ("the faults happened: crashes", self.crashes_raised + self.crashes_exited > 0),
            ("the faults happened: runtime restarted", self.runtime_starts >= 2),
            ("the faults happened: duplicated PutRecords", self.duplicates > 0),
        ]

    @property
    def ok(self) -> bool:
        """True when every check holds."""
        return all(ok for _, ok in self.checks())

    def figures(self) -> dict[str, tuple[float, str]]:
        """The benchmark figures (DESIGN.md: chaos.*)."""
        return {
            "chaos.events": (self.good, "count"),
            "chaos.lost": (self.lost, "count"),
            "chaos.applied_twice": (self.applied_twice, "count"),
            "chaos.poisoned": (self.poisoned, "count"),
            "chaos.redriven": (self.redriven, "count"),
            "chaos.sent": (self.sent, "count"),
            "chaos.processed": (self.processed, "count"),
            "chaos.retried": (self.esm["retries"], "count"),
            "chaos.duplicates_suppressed": (self.duplicates_suppressed, "count"),
            "chaos.seconds": (round(self.seconds, 1), "s"),
            "chaos.checks_failed": (sum(not ok for _, ok in self.checks()), "count"),
        }

    def table(self) -> str:
        """The final report: figures, how they add up, and the checks."""
        e = self.esm
        rows: list[tuple[str, str]] = [
            ("INPUT", ""),
            ("good events", f"{self.good:,}"),
            ("poison records", f"{self.poison:,}"),
            (
                "duplicates (records of PutRecords calls sent twice)",
                f"{self.duplicates:,} ({self.duplicates_of_poison:,} of them poison)",
            ),
            ("sent = good + poison + duplicates", f"{self.sent:,}"),
            ("FAULTS", ""),
            (
                "redis-server killed (SIGKILL), down for",
                f"{self.redis_outage_s:.1f} s, at {self.redis_killed_at_checkpointed:,} done",
            ),
            (
                "runtime SIGTERM + restart",
                f"{self.runtime_starts - 1}, at {self.restart_at_checkpointed:,} done",
            ),
            (
                "handler crashes (raised / process exit)",
                f"{self.crashes_raised} / {self.crashes_exited}",
            ),
            ("STREAM (event source mapping)", ""),
            ("records received (incl. re-reads after the restart)", f"{e['received']:,}"),
            ("invocations / function errors", f"{e['invokes']:,} / {e['function_errors']:,}"),
            ("retried (retries) / bisections", f"{e['retries']:,} / {e['bisections']:,}"),
            ("partial batch failures", f"{e['partial']:,}"),
            ("records discarded to the on-failure queue", f"{e['discarded']:,}"),
            ("REDRIVE", ""),
            (
                "on-failure messages / their records",
                f"{self.on_failure_messages:,} / {self.on_failure_records:,}",
            ),
            (
                "redriven (records re-put) / messages",
                f"{self.redriven:,} / {self.redrive_messages:,}",
            ),
            ("redrive errors / expired", f"{self.redrive_errors:,}"),
            (
                "poison queue redrive: still poison / re-put",
                f"{self.poison_redrive_still_poison:,} / {self.poison_redrive_reput:,}",
            ),
            ("on-failure messages left", f"{self.on_failure_left:,}"),
            ("HANDLER (what the wrapper saw of each delivered record)", ""),
            (
                "records delivered / invocations",
                f"{self.delivered:,} / {self.invocations:,}",
            ),
            ("applied, acknowledged", f"{self.applied_acknowledged:,}"),
            ("applied, reply lost to the outage (derived)", f"{self.applied_unacknowledged:,}"),
            ("duplicates suppressed (already applied)", f"{self.duplicates_suppressed:,}"),
            ("record failures (retried)", f"{self.record_failures:,}"),
            (
                "store calls that raised / their records",
                f"{self.store_calls_raised:,} / {self.records_in_raised_calls:,}",
            ),
            (
                "poison sends / failed sends",
                f"{self.poison_sends:,} / {self.poison_send_failures:,}",
            ),
            ("skipped by crashes (batch ended before them)", f"{self.skipped_by_crashes:,}"),
            ("sum of the above six (== delivered)", f"{self.delivered_accounted:,}"),
            ("END STATE", ""),
            ("processed (good events in Redis)", f"{self.processed:,}"),
            ("lost", f"{self.lost:,}"),
            ("applied twice (state != clean pass)", f"{self.applied_twice:,}"),
            ("feature keys compared", f"{self.state_keys:,}"),
            ("decisions", f"{self.decisions:,}"),
            ("poison DLQ messages", f"{self.poison_dlq_messages:,}"),
            ("poisoned (distinct, right reason)", f"{self.poisoned:,}"),
            ("wall time", f"{self.seconds:.1f} s"),
        ]
        width = max(len(label) for label, _ in rows)
        lines = [
            label if not value else f"  {label.ljust(width)}  {value}" for label, value in rows
        ]
        lines.append("CHECKS")
        lines += [f"  [{'ok' if ok else 'FAIL'}] {name}" for name, ok in self.checks()]
        if self.state_mismatches:
            lines.append(f"  state mismatches (first): {self.state_mismatches[:5]}")
        if self.poison_wrong_reason:
            lines.append(f"  poison with a wrong reason (first): {self.poison_wrong_reason[:5]}")
        return "\n".join(lines)
