"""The chaos run's end state: Redis against a clean pass, the queues, the stream, the handler."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench.chaos_input import Poison
from bench.chaos_report import ChaosReport
from kestrel.adapters.redis_features import RedisFeatureStore
from kestrel.adapters.redis_scripts import (
    CUSTOMER_POINTERS,
    TERMINAL_POINTERS,
    customer_keys,
    decision_key,
    decode_state,
    stored_transactions,
    terminal_keys,
)
from kestrel.adapters.redis_telemetry import NON_STATE_PREFIXES
from kestrel.events import Transaction

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_sqs import SQSClient


def drained(kinesis: KinesisClient, stream: str, checkpoints: dict[str, int]) -> bool:
    """True when every shard is checkpointed and nothing was put after its checkpoint."""
    shards = [s["ShardId"] for s in kinesis.list_shards(StreamName=stream)["Shards"]]
    for shard in shards:
        position = checkpoints.get(shard)
        if position is None:
            iterator = kinesis.get_shard_iterator(
                StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
        else:
            iterator = kinesis.get_shard_iterator(
                StreamName=stream,
                ShardId=shard,
                ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                StartingSequenceNumber=str(position),
            )["ShardIterator"]
        if kinesis.get_records(ShardIterator=iterator, Limit=1)["Records"]:
            return False
    return True


def feature_state(client: redis.Redis) -> dict[bytes, Any]:
    """Every feature key's content (decisions and TTLs left out), comparable; an entity's
    state is decoded, without when its TTL was last pushed.

    Telemetry and the drift status are left out too: they count attempts, not events.
    """
    skipped = (b"kestrel:{d:", *(p.encode() for p in NON_STATE_PREFIXES))
    dump: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        if key.startswith(skipped):
            continue
        kind = client.type(key)
        if kind == b"zset":
            dump[key] = ("zset", client.zrange(key, 0, -1, withscores=True))
        elif kind == b"hash":
            fields: dict[bytes, Any] = client.hgetall(key)  # type: ignore[assignment]
            if key.endswith(b":log") and b"s" in fields:  # an entity log: its state, decoded
                pointers = (
                    CUSTOMER_POINTERS if key.startswith(b"kestrel:{c:") else TERMINAL_POINTERS
                )
                state = decode_state(fields.pop(b"s"), pointers)
                state.pop("refreshed")  # when the TTL was pushed: arrival order, not features
                fields[b"s"] = state
            dump[key] = ("hash", fields)
        else:
            dump[key] = (kind, client.dump(key))
    return dump


def clean_pass(client: redis.Redis, good: list[dict[str, Any]]) -> None:
    """Apply `good` in order, once, to an empty database."""
    client.flushdb()
    store = RedisFeatureStore(client)
    ordered = [
        Transaction(
            str(r["transaction_id"]),
            str(r["customer_id"]),
            str(r["terminal_id"]),
            float(r["amount"]),
            int(r["event_time"]),
        )
        for r in good
    ]
    for start in range(0, len(ordered), 1000):
        results = store.apply_transactions(ordered[start : start + 1000])
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"the clean pass failed: {failed[0]}")


def present(client: redis.Redis, good: list[dict[str, Any]]) -> tuple[int, int]:
    """(good events in their customer's and terminal's sets, good events with a decision)."""
    held: dict[str, dict[str, int]] = {}

    def holds(key: str, tx: str) -> bool:
        if key not in held:
            held[key] = stored_transactions(client, key)
        return tx in held[key]

    found = decided = 0
    for start in range(0, len(good), 2000):
        chunk = good[start : start + 2000]
        pipe = client.pipeline(transaction=False)
        for r in chunk:
            pipe.exists(decision_key(str(r["transaction_id"])))
        for r, exists in zip(chunk, pipe.execute(), strict=True):
            tx = str(r["transaction_id"])
            found += holds(customer_keys(str(r["customer_id"]))[0], tx) and holds(
                terminal_keys(str(r["terminal_id"]))[0], tx
            )
            decided += bool(exists)
    return found, decided


def read_queue(sqs: SQSClient, queue_url: str, *, release: bool = False) -> list[dict[str, Any]]:
    """Every message body of a queue, not deleted (`release`: made visible again after)."""
    bodies: list[dict[str, Any]] = []
    handles: list[str] = []
    empty = 0
    while empty < 2:
        response = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600, WaitTimeSeconds=0
        )
        messages = response.get("Messages", [])
        empty = 0 if messages else empty + 1
        bodies += [json.loads(m["Body"]) for m in messages]
        handles += [m["ReceiptHandle"] for m in messages]
    if release:
        for handle in handles:
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=handle, VisibilityTimeout=0
            )
    return bodies


def queue_depth(sqs: SQSClient, queue_url: str) -> int:
    """Visible + in-flight messages of a queue."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def observations(directory: Path) -> Iterator[dict[str, Any]]:
    """Every line the crashy wrapper wrote."""
    for path in sorted(directory.glob("crashy-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def check_end_state(
    report: ChaosReport,
    good: list[dict[str, Any]],
    poison: dict[bytes, Poison],
    chaos_db: redis.Redis,
    clean_db: redis.Redis,
    sqs: SQSClient,
    poison_url: str,
    observe: Path,
) -> None:
    """Fill in the end state: Redis against a clean pass, the DLQs, the handler's counts."""
    report.processed, report.decisions = present(chaos_db, good)
    report.lost = report.good - report.processed
    clean_pass(clean_db, good)
    expected, got = feature_state(clean_db), feature_state(chaos_db)
    report.state_keys = len(expected)
    differing = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    report.state_mismatches = [k.decode(errors="replace") for k in differing[:20]]
    # Sets cannot hold an event twice: a second application would show as a changed
    # feature key (or a decision without its event), which the comparison counts.
    report.applied_twice = len(differing) + max(0, report.decisions - report.processed)
    total_decisions = sum(1 for _ in chaos_db.scan_iter(match="kestrel:{d:*", count=1000))
    report.applied_twice += max(0, total_decisions - report.good)

    letters = read_queue(sqs, poison_url)
    report.poison_dlq_messages = len(letters)
    found: set[bytes] = set()
    for letter in letters:
        payload = base64.b64decode(letter["payload_b64"])
        item = poison.get(payload)
        if item is None:
            report.unexpected_dlq += 1
        elif letter["reason"] != item.reason:
            report.poison_wrong_reason.append(f"{item.kind}: {letter['reason']} {letter['detail']}")
        else:
            found.add(payload)
    report.poisoned = len(found)
    report.poison_missing = len(poison) - len(found)

    for line in observations(observe):
        if "invoke" in line:
            report.invocations += 1
            report.delivered += int(line["invoke"])
        elif line.get("store") == "ok":
            report.applied_acknowledged += int(line["applied"])
            report.duplicates_suppressed += int(line["duplicates"])
            report.record_failures += int(line["failed"])
        elif line.get("store") == "raised":
            report.store_calls_raised += 1
            report.records_in_raised_calls += int(line["records"])
        elif "poison" in line:
            report.poison_sends += 1
        elif "poison_failed" in line:
            report.poison_send_failures += 1
        elif "skipped" in line:
            report.skipped_by_crashes += int(line["skipped"])
        elif "crash" in line:
            report.crashes_raised += line["crash"] == "raise"
            report.crashes_exited += line["crash"] == "exit"
