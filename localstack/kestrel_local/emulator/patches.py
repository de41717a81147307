"""Pinned throughput and correctness patches for moto's Kinesis, applied at emulator start-up.

What and why
------------
moto 5.2.5 keeps each Kinesis shard's records in an ``OrderedDict`` keyed by an integer
sequence number (``Shard.records``), and three methods on ``moto.kinesis.models.Shard`` do
work proportional to the whole shard on every call:

* ``get_max_sequence_number`` / ``get_min_sequence_number`` copy every key into a list
  (``list(self.records.keys())[-1]``) just to read one end, and ``put_record`` calls the
  former for every record put. PutRecords therefore slows down as the shard grows (measured:
  about 9.8k records/s falling to 1.5k over the first 50k records, 321 records/s at 220k).
* ``get_records`` walks the shard from its first record on every GetRecords call to find
  the records after the iterator's position, so reading deep in a big shard costs O(n) per
  call regardless of ``Limit``.
* ``put_record`` is documented "not safe for concurrency": moto's server is a threaded
  werkzeug server, so two PutRecords running at once can read the same newest sequence
  number and write the same key, and one record silently overwrites (loses) the other.

This module replaces those methods on the class (monkeypatching at start-up; site-packages is
never edited) with versions that:

* read the newest / oldest sequence number in O(1) with ``next(reversed(records))`` /
  ``next(iter(records))``;
* keep, per shard, an ascending list of the record keys in step with ``records``, and find
  a GetRecords starting point by bisecting it, then slice at most ``limit`` keys. The index is
  validated in O(1) on every read (same dict object, same length, same first and last key)
  and rebuilt when anything else replaced or mutated ``records`` (for example
  ``Stream.split_shard`` assigns a fresh ``OrderedDict``); if the keys are ever not
  ascending the original scan is used, so results never differ from moto's algorithm;
* serialise ``put_record``, ``get_records`` and ``get_sequence_number_at`` on a per-shard lock,
  so sequence numbers are unique and contiguous under concurrent PutRecords and readers never
  see the dict mid-mutation ("OrderedDict mutated during iteration").

Return contracts are unchanged: ``get_records`` returns ``(records, last_sequence_int,
millis_behind_latest)`` exactly as moto computes them (including its quirks for ``limit``
``None``, zero and negative), and ``get_sequence_number_at`` returns the same sequence number.

Measured next on the hot path (cProfile, in-process WSGI calls): moto's generic, botocore-
model-driven response serialiser (``moto.core.serialize``) took most of a GetRecords call's
time and about half of a PutRecords call's, per record returned.
``KinesisResponse.get_records`` and ``put_records`` are therefore patched to return an
``ActionResult`` subclass that lets the generic serialiser write the response *without* its
record list (so status, headers, key order and every other field are moto's own) and splices in
the list serialised directly, with moto's own blob and timestamp encoders. The unit tests
compare both bodies byte for byte. In-process this took GetRecords from about 25k to 78k
records/s and PutRecords from 20k to 36k records/s. Anything unexpected (another protocol,
pretty printing, an error) falls back to the generic path. The rest was left alone: the
backend's ``put_records`` does O(batch) work per call (size checks, an md5 per record, two
CloudWatch datapoints appended per call).

The patch is pinned: ``apply_patches`` refuses any moto other than ``PINNED_MOTO_VERSION``, so
an upgrade forces someone to re-read moto's Kinesis code, re-run the tests and re-measure.
"""

from __future__ import annotations

import json
import threading
from base64 import b64decode, b64encode
from bisect import bisect_right
from collections.abc import Callable
from itertools import pairwise
from typing import Any

PINNED_MOTO_VERSION = "5.2.5"

_PATCHED_METHODS = (
    "put_record",
    "get_records",
    "get_min_sequence_number",
    "get_max_sequence_number",
    "get_sequence_number_at",
)
_PATCHED_RESPONSES = ("get_records", "put_records")

_apply_lock = threading.Lock()
_lock_guard = threading.Lock()
_originals: dict[str, Callable[..., Any]] = {}


class UnsupportedMotoVersionError(RuntimeError):
    """The installed moto is not the version these patches were written and tested against."""


def check_moto_version() -> None:
    """Raise `UnsupportedMotoVersionError` unless the installed moto is `PINNED_MOTO_VERSION`.

    The patches replace private methods of moto's Kinesis ``Shard``; any other moto version
    may have changed them, so the launcher must not guess. Re-check the patched code against
    the new moto source, re-run the unit tests and the emulator benchmark, then bump the pin.
    """
    import moto

    found = getattr(moto, "__version__", "unknown")
    if found != PINNED_MOTO_VERSION:
        raise UnsupportedMotoVersionError(
            f"kestrel emulator patches are pinned to moto=={PINNED_MOTO_VERSION}, but moto "
            f"{found} is installed; re-check kestrel_local/emulator/patches.py against moto "
            f"{found}'s kinesis/models.py, re-run its tests and bench, then update the pin "
            f"(or start the emulator with --no-patch)"
        )


def apply_patches() -> None:
    """Install the Kinesis ``Shard`` patches on moto's classes; safe to call more than once.

    Checks the moto version first on every call (so a monkeypatched or upgraded moto is
    refused even when the patches are already in place), then replaces the methods listed in
    ``_PATCHED_METHODS`` on ``moto.kinesis.models.Shard``, keeping the originals so the
    non-ascending fallback and `remove_patches` can use them. Shards created before the call
    are covered as well: the per-shard lock and key index are created lazily.
    """
    check_moto_version()
    from moto.kinesis.models import Shard
    from moto.kinesis.responses import KinesisResponse

    with _apply_lock:
        if _originals:
            return
        replacements = _replacements()
        for name in _PATCHED_METHODS:
            _originals[name] = getattr(Shard, name)
            setattr(Shard, name, replacements[name])
        for name in _PATCHED_RESPONSES:
            _originals[f"response.{name}"] = getattr(KinesisResponse, name)
        setattr(KinesisResponse, "get_records", _get_records_response)  # noqa: B010
        setattr(KinesisResponse, "put_records", _put_records_response)  # noqa: B010


def remove_patches() -> None:
    """Restore moto's original ``Shard`` methods (used by tests to compare both algorithms)."""
    from moto.kinesis.models import Shard
    from moto.kinesis.responses import KinesisResponse

    with _apply_lock:
        for name, original in _originals.items():
            if name.startswith("response."):
                setattr(KinesisResponse, name.removeprefix("response."), original)
            else:
                setattr(Shard, name, original)
        _originals.clear()


def patches_applied() -> bool:
    """True while the Kinesis patches are installed in this process."""
    return bool(_originals)


def original(name: str) -> Callable[..., Any]:
    """moto's own implementation of the patched ``Shard`` method `name` (patched or not)."""
    if name in _originals:
        return _originals[name]
    from moto.kinesis.models import Shard

    method: Callable[..., Any] = getattr(Shard, name)
    return method


def _replacements() -> dict[str, Callable[..., Any]]:
    """The patched ``Shard`` methods by name."""
    return {
        "put_record": _put_record,
        "get_records": _get_records,
        "get_min_sequence_number": _get_min_sequence_number,
        "get_max_sequence_number": _get_max_sequence_number,
        "get_sequence_number_at": _get_sequence_number_at,
    }


def _shard_lock(shard: Any) -> threading.Lock:
    """The shard's own lock, created on first use (shards may predate the patch)."""
    lock: threading.Lock | None = shard.__dict__.get("_kestrel_lock")
    if lock is None:
        with _lock_guard:
            lock = shard.__dict__.get("_kestrel_lock")
            if lock is None:
                lock = threading.Lock()
                shard._kestrel_lock = lock
    return lock


def _key_index(shard: Any) -> tuple[list[int], bool]:
    """Return the shard's ascending key list and whether it is usable; rebuild it when stale.

    Must be called with the shard lock held. The O(1) staleness test catches a replaced
    ``records`` dict and any mutation that changes its length or either end, which is every
    mutation moto itself makes outside ``put_record``.
    """
    records = shard.records
    keys: list[int] | None = shard.__dict__.get("_kestrel_keys")
    if (
        keys is None
        or shard.__dict__.get("_kestrel_keys_of") is not records
        or len(keys) != len(records)
        or (keys and (keys[-1] != next(reversed(records)) or keys[0] != next(iter(records))))
    ):
        keys = list(records)
        shard._kestrel_keys = keys
        shard._kestrel_keys_of = records
        shard._kestrel_ascending = all(a < b for a, b in pairwise(keys))
    return keys, bool(shard.__dict__.get("_kestrel_ascending", True))


def _put_record(self: Any, partition_key: str, data: str, explicit_hash_key: str) -> str:
    """Append one record with the next sequence number, atomically per shard, in O(1).

    Same numbering as moto (newest key + 1, or 1 for an empty shard). The key index is
    appended to only while it is in step with ``records``; otherwise the next read rebuilds it.
    """
    from moto.kinesis.models import Record

    with _shard_lock(self):
        records = self.records
        sequence_number = next(reversed(records)) + 1 if records else 1
        keys: list[int] | None = self.__dict__.get("_kestrel_keys")
        in_step = (
            keys is not None
            and self.__dict__.get("_kestrel_keys_of") is records
            and len(keys) == len(records)
        )
        records[sequence_number] = Record(partition_key, data, sequence_number, explicit_hash_key)
        if keys is not None and in_step:
            if keys and sequence_number <= keys[-1]:
                self._kestrel_ascending = False
            keys.append(sequence_number)
    return str(sequence_number)


def _get_records(self: Any, last_sequence_id: str, limit: int | None) -> tuple[list[Any], int, int]:
    """Records after `last_sequence_id` (at most `limit`), found by bisection, as moto returns them.

    Mirrors moto's scan exactly: ``limit`` None or negative means "all"; ``limit`` 0 returns
    nothing when the first record is at or before the position and everything after it
    otherwise (moto checks the limit after each record it visits). ``millis_behind_latest`` is
    the newest record's arrival minus the last returned record's, in whole milliseconds.
    """
    with _shard_lock(self):
        keys, ascending = _key_index(self)
        if not ascending:
            result: tuple[list[Any], int, int] = _originals["get_records"](
                self, last_sequence_id, limit
            )
            return result
        last_sequence_int = int(last_sequence_id)
        start = bisect_right(keys, last_sequence_int)
        if limit is None or limit < 0 or (limit == 0 and start == 0):
            selected = keys[start:]
        elif limit == 0:
            selected = []
        else:
            selected = keys[start : start + limit]
        if not selected:
            return [], last_sequence_int, 0
        records = self.records
        results = [records[key] for key in selected]
        newest = records[keys[-1]]
        secs_behind_latest = newest.created_at - results[-1].created_at
        return results, selected[-1], int(secs_behind_latest * 1000)


def _get_min_sequence_number(self: Any) -> int:
    """The oldest sequence number in the shard (0 when empty), in O(1)."""
    records = self.records
    return next(iter(records)) if records else 0


def _get_max_sequence_number(self: Any) -> int:
    """The newest sequence number in the shard (0 when empty), in O(1)."""
    records = self.records
    return next(reversed(records)) if records else 0


def _get_sequence_number_at(self: Any, at_timestamp: float) -> int:
    """The newest sequence number that arrived before `at_timestamp` (0 if none), as moto finds it.

    Same algorithm as moto (scan back from the newest record), minus its O(n) copy of every
    record to read the oldest one, and under the shard lock so a concurrent put cannot break
    the iteration.
    """
    with _shard_lock(self):
        records = self.records
        if not records or at_timestamp <= records[next(iter(records))].created_at:
            return 0
        for record in reversed(records.values()):
            if record.created_at < at_timestamp:
                found: int = record.sequence_number
                return found
        return 0


def _records_result(
    result: dict[str, Any],
    key: str,
    items: list[dict[str, Any]],
    generic_items: Callable[[], list[dict[str, Any]]],
) -> Any:
    """An ``ActionResult`` for `result` whose list `key` is serialised directly as `items`.

    `items` are JSON-ready dicts in the output shape's member order. The generic serialiser
    writes `result` with ``[]`` under `key` (status, headers, every other field and the key
    order stay moto's own); the body is then re-encoded with `items` spliced in at the same
    position. For any other protocol, pretty printing or an unexpected body, the whole result
    goes through the generic serialiser with `generic_items()` (what moto would have passed).
    """
    from moto import settings
    from moto.core.responses import ActionContext, ActionResult
    from moto.core.serialize import JSONSerializer

    class SplicedResult(ActionResult):
        def execute_result(self, context: ActionContext) -> Any:
            if context.serializer_class is JSONSerializer and not settings.PRETTIFY_RESPONSES:
                status, headers, body = ActionResult({**result, key: []}).execute_result(context)
                try:
                    document = json.loads(body)
                except (TypeError, ValueError):
                    document = None
                if isinstance(document, dict) and document.get(key) == []:
                    document[key] = items
                    return status, headers, json.dumps(document)
            generic = ActionResult({**result, key: generic_items()})
            return generic.execute_result(context)

    return SplicedResult({**result, key: []})


def _unix_timestamp() -> Callable[[Any], Any]:
    """moto's own JSON-protocol timestamp encoder (unix seconds, millisecond precision)."""
    from moto.core.serialize import TimestampSerializer

    serializer = TimestampSerializer(TimestampSerializer.TIMESTAMP_FORMAT_UNIX)

    def encode(value: Any) -> Any:
        return serializer._convert_timestamp_to_str(value, serializer.TIMESTAMP_FORMAT_UNIX)

    return encode


def _get_records_response(self: Any) -> Any:
    """``KinesisResponse.get_records`` with the records serialised directly (same body)."""
    stream_arn = self._get_param("StreamARN")
    shard_iterator = self._get_param("ShardIterator")
    limit = self._get_param("Limit")
    next_shard_iterator, records, millis_behind_latest = self.kinesis_backend.get_records(
        stream_arn, shard_iterator, limit
    )
    timestamp = _unix_timestamp()
    items = [
        {
            "SequenceNumber": str(record.sequence_number),
            "ApproximateArrivalTimestamp": timestamp(record.created_at_datetime),
            "Data": b64encode(b64decode(record.data)).decode("utf-8"),
            "PartitionKey": record.partition_key,
        }
        for record in records
    ]
    result = {
        "NextShardIterator": next_shard_iterator,
        "Records": [],
        "MillisBehindLatest": millis_behind_latest,
    }
    return _records_result(result, "Records", items, lambda: [r.to_json() for r in records])


def _put_records_response(self: Any) -> Any:
    """``KinesisResponse.put_records`` with the per-record results serialised directly."""
    stream_arn = self._get_param("StreamARN")
    stream_name = self._get_param("StreamName")
    records = self._get_param("Records")
    response = self.kinesis_backend.put_records(stream_arn, stream_name, records)
    entries = response["Records"]
    if any(list(entry) != ["SequenceNumber", "ShardId"] for entry in entries):
        from moto.core.responses import ActionResult

        return ActionResult(response)
    return _records_result(response, "Records", entries, lambda: entries)
