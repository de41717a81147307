"""Unit tests for the open-loop load generator's pure parts (no network, no event loop)."""

from __future__ import annotations

import asyncio
import math
from time import perf_counter_ns
from typing import Any

import h11
import pytest

from bench.loadgen import Dispatcher, OpenLoopClient, schedule_ns
from bench.loadgen_http import PreparedRequest, _Connection, prepare_requests
from bench.loadgen_stats import (
    CONNECTION_ERROR,
    PENDING,
    RESPONSE,
    TIMEOUT,
    LoadResult,
    percentile,
    summarize,
    summary,
)
from kestrel_local.http_wire import parse_server_timing

MS = 1_000_000


class FakeTransport(asyncio.Transport):
    """Records what the connection writes; no socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


def response(status: int = 200, timing: str = "app;dur=0.25") -> bytes:
    """A keep-alive HTTP/1.1 response, as a server would send it."""
    body = b'{"score":0.1}'
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nServer-Timing: {timing}\r\n\r\n"
    return head.encode() + body


def requests(n: int) -> list[PreparedRequest]:
    return prepare_requests("POST", "/v1/score", "127.0.0.1:1", [], [b"{}"] * n)


def client_with_one_connection(n: int) -> tuple[OpenLoopClient, _Connection, FakeTransport]:
    """A client over `n` requests with one connection on a fake transport, not reconnecting."""
    client = OpenLoopClient("127.0.0.1", 1, requests(n), [0] * n)
    client.stopping = True  # a dropped connection is not reopened (no event loop here)
    conn, transport = _Connection(client), FakeTransport()
    conn.connection_made(transport)
    client.live.add(conn)
    client.release(conn)
    return client, conn, transport


def test_loadgen_schedule_spaces_requests_at_the_rate() -> None:
    offsets = schedule_ns(500, 2)
    assert len(offsets) == 1000
    assert offsets[:3] == [0, 2 * MS, 4 * MS]
    assert offsets[-1] == 1998 * MS
    assert schedule_ns(3, 1) == [0, 333_333_333, 666_666_667]
    with pytest.raises(ValueError):
        schedule_ns(0, 1)


def test_loadgen_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_loadgen_summarize_gives_count_mean_and_max() -> None:
    stats = summarize([3.0, 1.0, 2.0, 10.0])
    assert stats["count"] == 4 and stats["mean"] == 4.0
    assert stats["p50"] == 2.0 and stats["p99"] == 10.0 and stats["max"] == 10.0
    assert math.isnan(summarize([])["p99"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"app;dur=0.213", 0.213),
        ("app;dur=0.213", 0.213),
        ('db;dur=1.5, app;desc="handler";dur=0.5', 0.5),
        ("app ; dur = 2 ", 2.0),
        ('app;dur="0.75"', 0.75),
        ("cache;dur=3", None),
        ("app", None),
        ("app;dur=fast", None),
        (b"", None),
    ],
)
def test_loadgen_parse_server_timing_reads_the_app_duration(
    value: bytes | str, expected: float | None
) -> None:
    assert parse_server_timing(value) == expected


def test_loadgen_prepared_requests_are_h11_bytes_with_shared_heads() -> None:
    bodies = [b'{"a":1}', b'{"a":2}', b'{"a":10}']
    prepared = prepare_requests("POST", "/v1/score", "127.0.0.1:8000", [("x-api-key", "k")], bodies)
    for p, body in zip(prepared, bodies, strict=True):
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", "127.0.0.1:8000"), ("x-api-key", "k")]
        headers.append(("Content-Length", str(len(body))))
        events = (h11.Request(method="POST", target="/v1/score", headers=headers),
                  h11.Data(data=body), h11.EndOfMessage())  # fmt: skip
        expected = b"".join(conn.send(e) or b"" for e in events)
        assert p.wire == expected and p.body == body
    assert prepared[0].head is prepared[1].head  # same length, one head
    assert prepared[2].head is not prepared[0].head


def test_loadgen_dispatcher_reuses_the_last_freed_connection_and_queues_fifo() -> None:
    d: Dispatcher[str] = Dispatcher()
    d.release("a")
    d.release("b")
    assert d.arrive(0) == "b"  # LIFO: the most recently freed
    assert d.arrive(1) == "a"
    assert d.arrive(2) is None and d.arrive(3) is None
    assert d.pool_waits == 2 and d.max_waiting == 2
    assert d.release("a") == 2  # FIFO: the oldest waiting request goes first
    assert d.release("b") == 3
    assert d.release("a") is None and d.idle == ["a"]
    d.discard("a")
    assert d.arrive(4) is None


def test_loadgen_connection_records_status_timing_and_last_byte_time() -> None:
    client, conn, transport = client_with_one_connection(2)
    client.result.intended_ns = [perf_counter_ns()] * 2
    assert client.dispatch.arrive(0) is conn
    conn.send(0)
    assert transport.written == [client.requests[0].wire]
    raw = response(timing="db;dur=0.1, app;dur=0.42")
    conn.data_received(raw[:20])
    assert client.result.outcome[0] == PENDING  # not until the last byte
    before_last = perf_counter_ns()
    conn.data_received(raw[20:])
    r = client.result
    assert r.outcome[0] == RESPONSE and r.status[0] == 200
    assert r.done_ns[0] >= before_last >= r.sent_ns[0] > 0
    assert parse_server_timing(r.server_timing[0]) == 0.42
    assert client.dispatch.idle == [conn]  # keep-alive: ready for the next request
    conn.send(1)  # h11 moved to the next cycle: a second request on the same connection
    conn.data_received(response(status=503))
    assert r.status[1] == 503 and r.is_error(1) and not r.is_error(0)


def test_loadgen_stall_is_carried_by_the_requests_that_waited() -> None:
    """Coordinated omission: requests due during a stall are timed from when they were due."""
    client, conn, _ = client_with_one_connection(5)
    now = perf_counter_ns()
    client.result.intended_ns = [now - 100 * MS + i * 2 * MS for i in range(5)]  # due 100 ms ago
    r = client.result
    assert client.dispatch.arrive(0) is conn
    conn.send(0)
    for i in range(1, 5):  # the only connection is stuck on request 0: the others wait
        assert client.dispatch.arrive(i) is None
    for i in range(5):  # the stall ends: each response frees the connection for the next
        conn.data_received(response())
        assert r.outcome[i] == RESPONSE
    assert client.dispatch.pool_waits == 4
    for i in range(1, 5):
        service_ms = (r.done_ns[i] - r.sent_ns[i]) / 1e6
        assert (
            r.latency_ms(i) >= 100 - 2 * i > 50 > service_ms
        )  # the stall counts, not just service
        assert (r.sent_ns[i] - r.intended_ns[i]) / 1e6 >= 100 - 2 * i  # sent late, timed from due


def test_loadgen_timeouts_and_lost_connections_are_errors_not_drops() -> None:
    client, conn, transport = client_with_one_connection(3)
    now = perf_counter_ns()
    client.result.intended_ns = [now - 10_000 * MS, now - 10_000 * MS, now]
    assert client.dispatch.arrive(0) is conn
    conn.send(0)
    assert client.dispatch.arrive(1) is None  # waiting for the busy connection
    client.expire(now)  # both are older than the 5 s timeout
    r = client.result
    assert r.outcome[:2] == [TIMEOUT, TIMEOUT] and transport.aborted
    assert not client.dispatch.waiting and conn not in client.live
    other = _Connection(client)
    other.connection_made(FakeTransport())
    other.send(2)
    other.connection_lost(ConnectionResetError("reset"))
    assert r.outcome[2] == CONNECTION_ERROR
    s = summary(r)
    assert s["requests"] == 3 and s["errors"] == 3
    assert s["errors_by_kind"] == {"non_2xx": 0, "timeout": 2, "connection": 1, "pending": 0}
    assert s["latency_ms"]["count"] == 2  # timeouts are timed (>= the timeout), resets are not
    assert s["latency_ms"]["p50"] >= 10_000


def test_loadgen_summary_counts_every_outcome_and_measures_lag() -> None:
    r = LoadResult.empty(4)
    r.intended_ns = [0, 10 * MS, 20 * MS, 30 * MS]
    r.scheduled_ns = [1 * MS, 10 * MS, 20 * MS, 31 * MS]
    r.sent_ns = [1 * MS, 15 * MS, 20 * MS, 0]
    r.done_ns = [2 * MS, 16 * MS, 21 * MS, 0]
    r.outcome = [RESPONSE, RESPONSE, RESPONSE, PENDING]
    r.status = [200, 200, 500, 0]
    r.server_timing = [b"app;dur=0.5", b"", b"app;dur=0.2", b""]
    s = summary(r)
    assert s["errors"] == 2 and s["errors_by_kind"]["non_2xx"] == 1
    assert s["errors_by_kind"]["pending"] == 1
    assert s["statuses"] == {"200": 2, "500": 1}
    assert s["latency_ms"]["max"] == 6.0  # request 1: due at 10 ms, last byte at 16 ms
    assert s["in_handler_ms"]["count"] == 2 and s["missing_server_timing"] == 1
    assert s["sched_lag_ms"]["max"] == 1.0 and s["send_lag_ms"]["max"] == 5.0
    assert s["achieved_rate"] == pytest.approx(100.0)  # 3 intervals over 30 ms of sends
