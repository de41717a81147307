"""Unit tests for the pinned moto Kinesis patches: Shard objects and in-process WSGI, no network."""

from __future__ import annotations

import base64
import itertools
import json
import sys
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import moto
import pytest
from moto.kinesis.models import Shard, Stream
from moto.kinesis.responses import KinesisResponse
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.test import Client

from kestrel_local.emulator import patches
from kestrel_local.emulator.patches import (
    PINNED_MOTO_VERSION,
    UnsupportedMotoVersionError,
    apply_patches,
    original,
)

LAST_IDS = [-5, -1, 0, 1, 2, 17, 99, 100, 101, 149, 150, 151, 10**9]
LIMITS: list[int | None] = [None, -1, 0, 1, 2, 7, 50, 149, 150, 151, 10_000]


@pytest.fixture(autouse=True)
def patched() -> Iterator[None]:
    """Every test runs with the patches installed."""
    apply_patches()
    yield


def make_shard(count: int, start_time: float = 1_767_225_600.0) -> Shard:
    """A shard holding `count` records with distinct, increasing arrival times."""
    shard = Shard(0, 0, 2**128 - 1)
    for i in range(count):
        shard.put_record(f"pk-{i % 7}", base64.b64encode(f"data-{i}".encode()).decode(), "")
        record = shard.records[i + 1]
        record.created_at = start_time + i * 0.0371
    return shard


def original_get_records(shard: Shard, last: str, limit: int | None) -> Any:
    """moto's own GetRecords scan."""
    return original("get_records")(shard, last, limit)


def assert_same_as_original(shard: Shard) -> None:
    """Patched get_records equals moto's scan for every (position, limit) case."""
    for last, limit in itertools.product(LAST_IDS, LIMITS):
        want = original_get_records(shard, str(last), limit)
        got = shard.get_records(str(last), limit)
        assert [r.sequence_number for r in got[0]] == [r.sequence_number for r in want[0]], (
            last,
            limit,
        )
        assert [id(r) for r in got[0]] == [id(r) for r in want[0]]
        assert got[1:] == want[1:], (last, limit)


def test_put_record_numbers_are_unique_and_contiguous_under_concurrent_puts() -> None:
    shard = Shard(0, 0, 2**128 - 1)
    threads, per_thread = 8, 1500
    numbers: list[list[str]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def put(slot: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            numbers[slot].append(shard.put_record(f"pk-{slot}", f"{slot}-{i}", ""))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=put, args=(slot,)) for slot in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)

    total = threads * per_thread
    assigned = sorted(int(n) for batch in numbers for n in batch)
    assert assigned == list(range(1, total + 1))
    assert list(shard.records) == list(range(1, total + 1))
    assert all(
        shard.records[int(n)].partition_key == f"pk-{s}" for s, b in enumerate(numbers) for n in b
    )


def test_get_records_matches_unpatched_scan_for_every_position_and_limit() -> None:
    assert_same_as_original(make_shard(150))


def test_get_records_matches_unpatched_scan_on_an_empty_shard() -> None:
    assert_same_as_original(make_shard(0))


def test_get_records_slices_the_limit_from_deep_in_the_shard() -> None:
    shard = make_shard(5000)
    records, last, millis = shard.get_records("4000", 100)
    assert [r.sequence_number for r in records] == list(range(4001, 4101))
    assert last == 4100
    assert millis == int((shard.records[5000].created_at - shard.records[4100].created_at) * 1000)


def test_get_records_sees_records_put_after_the_index_was_built() -> None:
    shard = make_shard(10)
    assert shard.get_records("0", None)[1] == 10
    shard.put_record("pk", "ZGF0YQ==", "")
    records, last, _ = shard.get_records("10", None)
    assert [r.sequence_number for r in records] == [11]
    assert last == 11


def test_get_records_rebuilds_index_when_records_are_replaced() -> None:
    shard = make_shard(50)
    shard.get_records("0", 10)
    replacement = make_shard(80)
    shard.records = replacement.records
    assert_same_as_original(shard)
    shard.records = OrderedDict()
    assert shard.get_records("0", None) == ([], 0, 0)


def test_get_records_rebuilds_index_when_records_are_mutated_in_place() -> None:
    shard = make_shard(40)
    shard.get_records("0", 10)
    del shard.records[40]
    del shard.records[next(iter(shard.records))]
    assert_same_as_original(shard)
    assert shard.get_records("0", 1)[0][0].sequence_number == 2


def test_get_records_falls_back_to_the_scan_when_keys_are_not_ascending() -> None:
    shard = make_shard(30)
    shuffled = OrderedDict((k, shard.records[k]) for k in [5, 3, 9, 1, 30, 12])
    shard.records = shuffled
    assert_same_as_original(shard)


def test_get_records_index_is_rebuilt_after_split_and_merge_shard() -> None:
    stream = Stream("s", 1, None, None, "123456789012", "us-east-1")  # type: ignore[abstract]
    for i in range(300):
        stream.put_record(f"key-{i}", "", base64.b64encode(f"v{i}".encode()).decode())
    parent = stream.shards["shardId-000000000000"]
    before = parent.get_records("0", None)[0]
    assert len(before) == 300

    # moto 5.2.5 replaces parent.records and re-puts every record through the stream, whose
    # routing still picks the (now closed) parent first, so the parent gets new Record objects.
    stream.split_shard(parent.shard_id, str(2**127))
    after = parent.get_records("0", None)[0]
    assert [id(r) for r in after] == [id(r) for r in parent.records.values()]
    assert not {id(r) for r in after} & {id(r) for r in before}
    assert_same_as_original(parent)

    children = [s for s in stream.shards.values() if s.parent == parent.shard_id]
    for n, child in enumerate(children):
        for i in range(40 + n * 25):
            child.put_record(f"c{n}", base64.b64encode(f"{n}-{i}".encode()).decode(), "")
        child.get_records("0", 5)
    stream.merge_shards(children[0].shard_id, children[1].shard_id)
    merged = next(s for s in stream.shards.values() if s.adjacent_parent)
    got = merged.get_records("0", None)[0]
    assert [r.data for r in got] == [r.data for c in children for r in c.records.values()]
    assert [r.sequence_number for r in got] == list(range(1, 106))
    assert_same_as_original(merged)


def test_sequence_number_bounds_are_read_from_the_ends() -> None:
    empty = Shard(0, 0, 1)
    assert (empty.get_min_sequence_number(), empty.get_max_sequence_number()) == (0, 0)
    shard = make_shard(25)
    del shard.records[1]
    assert (shard.get_min_sequence_number(), shard.get_max_sequence_number()) == (2, 25)
    assert original("get_max_sequence_number")(shard) == 25


def test_get_sequence_number_at_matches_unpatched() -> None:
    shard = make_shard(60)
    first = shard.records[1].created_at
    for offset in [-1.0, 0.0, 0.001, 0.0371, 0.5, 1.0, 2.2, 100.0]:
        at = first + offset
        assert shard.get_sequence_number_at(at) == original("get_sequence_number_at")(shard, at)
    assert Shard(0, 0, 1).get_sequence_number_at(first) == 0


def test_apply_patches_refuses_another_moto_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moto, "__version__", "5.2.6")
    with pytest.raises(UnsupportedMotoVersionError, match=r"moto==5\.2\.5.*moto 5\.2\.6"):
        apply_patches()


def test_apply_patches_is_idempotent_and_keeps_the_originals() -> None:
    assert PINNED_MOTO_VERSION == "5.2.5"
    apply_patches()
    apply_patches()
    assert Shard.get_records is patches._get_records
    assert original("get_records") is not patches._get_records
    assert original("get_records").__module__ == "moto.kinesis.models"
    assert patches.patches_applied()


def test_remove_patches_restores_moto_and_apply_reinstalls() -> None:
    patches.remove_patches()
    try:
        assert Shard.get_records.__module__ == "moto.kinesis.models"
        assert KinesisResponse.get_records.__module__ == "moto.kinesis.responses"
    finally:
        apply_patches()
    assert Shard.put_record is patches._put_record


class Kinesis:
    """moto's WSGI app called in-process (no sockets)."""

    def __init__(self) -> None:
        self.client = Client(DomainDispatcherApplication(create_backend_app))

    def call(self, action: str, body: dict[str, Any]) -> bytes:
        response = self.client.post(
            "/",
            data=json.dumps(body),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": f"Kinesis_20131202.{action}",
                "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/"
                "kinesis/aws4_request, SignedHeaders=host, Signature=x",
            },
        )
        assert response.status_code == 200, response.data[:500]
        assert response.headers["Content-Type"] == "application/x-amz-json-1.1"
        return bytes(response.data)


def batch(count: int) -> list[dict[str, str]]:
    """Records with awkward payloads: binary, empty, unicode keys, quotes."""
    payloads = [b"\x00\xff\xfe binary", b"", 'ünïcødé "q" \n'.encode(), b"x" * 1000]
    return [
        {
            "Data": base64.b64encode(payloads[i % 4] + str(i).encode()).decode(),
            "PartitionKey": ["ключ", 'k"q', "plain", "\u2603"][i % 4] + str(i),
        }
        for i in range(count)
    ]


def use_original_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route KinesisResponse through moto's generic serialisation for this test."""
    monkeypatch.setattr(KinesisResponse, "get_records", original("response.get_records"))
    monkeypatch.setattr(KinesisResponse, "put_records", original("response.put_records"))


def test_put_records_response_body_is_byte_identical_to_generic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kinesis = Kinesis()
    fast, generic = f"fast-{uuid.uuid4().hex}", f"generic-{uuid.uuid4().hex}"
    for name in (fast, generic):
        kinesis.call("CreateStream", {"StreamName": name, "ShardCount": 1})
    records = batch(40)
    fast_body = kinesis.call("PutRecords", {"StreamName": fast, "Records": records})
    use_original_responses(monkeypatch)
    generic_body = kinesis.call("PutRecords", {"StreamName": generic, "Records": records})
    assert fast_body == generic_body
    assert len(json.loads(fast_body)["Records"]) == 40


def test_get_records_response_body_is_byte_identical_to_generic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kinesis = Kinesis()
    name = f"get-{uuid.uuid4().hex}"
    kinesis.call("CreateStream", {"StreamName": name, "ShardCount": 1})
    kinesis.call("PutRecords", {"StreamName": name, "Records": batch(60)})
    iterator = json.loads(
        kinesis.call(
            "GetShardIterator",
            {"StreamName": name, "ShardId": "shardId-000000000000", "ShardIteratorType": "LATEST"},
        )
    )["ShardIterator"]
    assert json.loads(kinesis.call("GetRecords", {"ShardIterator": iterator}))["Records"] == []
    iterator = json.loads(
        kinesis.call(
            "GetShardIterator",
            {
                "StreamName": name,
                "ShardId": "shardId-000000000000",
                "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
                "StartingSequenceNumber": "3",
            },
        )
    )["ShardIterator"]
    request = {"ShardIterator": iterator, "Limit": 50}
    fast_body = kinesis.call("GetRecords", request)
    use_original_responses(monkeypatch)
    generic_body = kinesis.call("GetRecords", request)
    assert fast_body == generic_body
    document = json.loads(fast_body)
    assert [r["SequenceNumber"] for r in document["Records"]] == [str(n) for n in range(4, 54)]
    assert base64.b64decode(document["Records"][0]["Data"]) == b"x" * 1000 + b"3"
