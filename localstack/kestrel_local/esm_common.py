"""Rules shared by the Kinesis and SQS event-source mappings: partial batch responses, stats."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kestrel_local.invoker import InvokeResult

log = logging.getLogger("kestrel_local.esm")

WHOLE_BATCH_FAILED = None


def failed_item_ids(
    result: InvokeResult, report_item_failures: bool, batch_ids: Collection[str]
) -> list[str] | None:
    """Judge an invoke as AWS does: None if the whole batch failed, else the failed item ids.

    With ReportBatchItemFailures off, only a function error fails the batch and the
    response is ignored. With it on, a null response, a missing/null/empty
    `batchItemFailures` list is success; a response that is not an object, a list that is
    not a list, an entry without `itemIdentifier`, a null or empty identifier, or one that
    is not in the batch fails the whole batch.
    """
    if result.function_error:
        return WHOLE_BATCH_FAILED
    if not report_item_failures or result.payload is None:
        return []
    payload = result.payload
    if not isinstance(payload, dict):
        log.warning("malformed batch response (not an object): %.200r", payload)
        return WHOLE_BATCH_FAILED
    failures = payload.get("batchItemFailures")
    if failures is None:
        return []
    if not isinstance(failures, list):
        log.warning("malformed batchItemFailures (not a list): %.200r", failures)
        return WHOLE_BATCH_FAILED
    ids: list[str] = []
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(identifier, str) or not identifier or identifier not in batch_ids:
            log.warning("invalid batch item failure %.200r: whole batch fails", item)
            return WHOLE_BATCH_FAILED
        ids.append(identifier)
    return ids


def iso_millis(epoch_s: float) -> str:
    """An ISO-8601 UTC time with milliseconds, as AWS writes them (2019-11-14T00:13:49.717Z)."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class MappingStats:
    """Counters for one mapping, for logs and status; thread-safe increments."""

    received: int = 0
    invokes: int = 0
    function_errors: int = 0
    partial_failures: int = 0
    retries: int = 0
    bisections: int = 0
    succeeded: int = 0
    discarded: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def summary(self) -> str:
        """One log line of the counters."""
        return (
            f"received={self.received} succeeded={self.succeeded} invokes={self.invokes} "
            f"errors={self.function_errors} partial={self.partial_failures} "
            f"retries={self.retries} bisections={self.bisections} discarded={self.discarded}"
        )
