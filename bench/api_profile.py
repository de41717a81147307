"""Profile ``POST /v1/score`` in process: CPU per request by stage, and a cProfile listing.

Usage: ``python bench/api_profile.py [--requests 5000] [--profile 30]``. Starts a
redis-server on KESTREL_REDIS_PORT (default: a free port), seeds a small simulated history
through ``RedisFeatureStore.apply_transactions``, builds the API as ``kestrel_local serve``
does (`load_app`, `build_server`) and answers requests with ``FastGateway.answer`` (no
socket). Each stage is timed on its own loop with `time.process_time` (µs per request):
the head parse, the whole answer, the Chalice app call, and the view's parts.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: python bench/api_profile.py
    sys.path[:0] = [str(REPO), str(REPO / "training")]

import orjson  # noqa: E402
import redis  # noqa: E402
from chalice.app import Request  # noqa: E402
from kestrel_training.simulator import SimulatorConfig  # noqa: E402

from bench.api_stack import History, seed  # noqa: E402
from kestrel.adapters.redis_features import RedisFeatureStore  # noqa: E402
from kestrel_local.api_server import build_server, load_app  # noqa: E402
from kestrel_local.functions import FunctionSpec  # noqa: E402
from kestrel_local.http_wire import Head, parse_head  # noqa: E402
from kestrel_local.processes import LOOPBACK, free_port  # noqa: E402

KEY = "profile-key"
# The HTTP row's client: requests (NUL-separated on stdin) in turn over keep-alive sockets.
CLIENT = r"""
import socket, sys
n, c, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
data = sys.stdin.buffer.read().split(b"\0")
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(c)]
for s in socks:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(n):
    s = socks[i % c]
    s.sendall(data[i])
    buf = b""
    while True:
        buf += s.recv(65536)
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            length = int(buf.split(b"Content-Length: ")[1].split(b"\r")[0])
            if len(buf) >= end + 4 + length:
                break
"""


@contextmanager
def redis_server(port: int) -> Iterator[redis.Redis]:
    """A throwaway redis-server on `port` (no persistence)."""
    folder = tempfile.mkdtemp(prefix="kestrel-profile-")
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", LOOPBACK,
         "--save", "", "--appendonly", "no", "--dir", folder],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host=LOOPBACK, port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield client
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def per_request_us(call: Callable[[int], Any], n: int) -> float:
    """CPU µs per call of `call(i)`, i in 0..n-1."""
    started = time.process_time()
    for i in range(n):
        call(i)
    return (time.process_time() - started) / n * 1e6


def request(history: History, i: int, rng: random.Random) -> bytes:
    """One scoring request on the wire."""
    tx = history.transaction(rng, f"bench.tx.{i}", int(time.time() * 1000))
    body = orjson.dumps({
        "transaction_id": tx.transaction_id, "customer_id": tx.customer_id,
        "terminal_id": tx.terminal_id, "amount": tx.amount, "event_time": tx.event_time_ms,
        "channel": None, "device_id": None,
    })  # fmt: skip
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
        f"x-api-key: {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--profile", type=int, default=30, help="cProfile rows (0: none)")
    parser.add_argument("--connections", type=int, default=1, help="client connections (HTTP row)")
    parser.add_argument("--profile-out", default="", help="also write the cProfile stats here")
    args = parser.parse_args(argv)
    port = int(os.environ.get("KESTREL_REDIS_PORT") or free_port(LOOPBACK))
    with redis_server(port) as client:
        history = seed(
            RedisFeatureStore(client), SimulatorConfig(200, 400, 38), int(time.time() * 1000)
        )
        spec = FunctionSpec(
            "ApiFunction", "kestrel-api", "", "app.app", REPO / "functions" / "api",
            "python3.11", 10.0, 1024, {}, (REPO / "layers" / "core",),
        )  # fmt: skip
        env = {"REDIS_URL": f"redis://{LOOPBACK}:{port}/0",
               "KESTREL_API_KEY": KEY, "KESTREL_API_AUTH": "app", "LOG_LEVEL": "INFO"}  # fmt: skip
        app = load_app(spec, {k: str(v) for k, v in env.items()})
        server = build_server(app, spec, LOOPBACK, 0)
        gateway = server.server.gateway
        rng = random.Random(7)
        wires = [request(history, i, rng) for i in range(args.requests)]
        heads: list[Head] = []
        for wire in wires:
            head = parse_head(wire)
            assert isinstance(head, Head)
            heads.append(head)
        bodies = [w[h.size :] for w, h in zip(wires, heads, strict=True)]
        first = gateway.answer(heads[0], bodies[0])
        print(first.decode(errors="replace"), file=sys.stderr)
        for i in range(200):  # warm
            gateway.answer(heads[i], bodies[i])
        n = args.requests
        events = [gateway.events.fast_event("POST", "/v1/score", h.headers, b)
                  for h, b in zip(heads, bodies, strict=True)]  # fmt: skip
        rows = {
            "parse_head": per_request_us(lambda i: parse_head(wires[i]), n),
            "answer (gateway + app)": per_request_us(
                lambda i: gateway.answer(heads[i], bodies[i]), n
            ),
            "fast_event": per_request_us(
                lambda i: gateway.events.fast_event(
                    "POST", "/v1/score", heads[i].headers, bodies[i]
                ),
                n,
            ),
            "handle_request (context, event, app)": per_request_us(
                lambda i: gateway.handle_request("POST", "/v1/score", heads[i].headers, bodies[i]),
                n,
            ),
            "app(event) (Chalice + view)": per_request_us(
                lambda i: app(dict(events[i], headers=dict(events[i]["headers"])), None), n
            ),
        }
        _view_stages(app, bodies, events, rows, n)
        rows.update(_over_http(server, wires, args.connections))
        print(f"{'stage':40s} µs CPU/request (n={n})")
        for name, us in rows.items():
            print(f"{name:40s} {us:8.1f}")
        if args.profile:
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
            for i in range(n):
                gateway.answer(heads[i], bodies[i])
            profiler.disable()
            if args.profile_out:
                profiler.dump_stats(args.profile_out)
            stats = pstats.Stats(profiler).sort_stats("tottime")
            stats.print_stats(args.profile)
            stats.sort_stats("cumulative").print_stats(args.profile * 2)
        server.server.server_close()
    return 0


def _over_http(server: Any, wires: list[bytes], connections: int) -> dict[str, float]:
    """Server CPU per request over loopback HTTP: a client process, keep-alive connections."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    gateway, inside = server.server.gateway, [0.0]
    answer = gateway.answer

    def timed(head: Head, body: bytes) -> bytes:
        begun = time.thread_time()
        try:
            out: bytes = answer(head, body)
            return out
        finally:
            inside[0] += time.thread_time() - begun

    gateway.answer = timed
    started = time.process_time()
    subprocess.run([sys.executable, "-c", CLIENT, str(len(wires)), str(connections),
                    str(server.port)], input=b"\0".join(wires), check=True)  # fmt: skip
    used = time.process_time() - started
    server.shutdown()
    thread.join(5)
    del gateway.answer
    return {
        f"over HTTP, {connections} connection(s) (server)": used / len(wires) * 1e6,
        "  of which in FastGateway.answer": inside[0] / len(wires) * 1e6,
    }


def _model_stages(
    service: Any, reader: Any, txs: list[Any], rows: dict[str, float], n: int
) -> None:
    """`ScoringService.score`'s parts: breaker, feature vector, model, reasons, records."""
    from kestrel.decisions import decide_with_model
    from kestrel.events import json_document
    from kestrel.features import feature_vector

    breaker = service._breaker
    rows["    breaker.call (no-op call)"] = per_request_us(lambda i: breaker.call(int, i), n)
    previews = [reader.preview_transactions([tx])[0] for tx in txs[:1]]
    p = previews[0]
    vectors = [feature_vector(tx.amount, tx.event_time_ms, p.customer, p.terminal) for tx in txs]
    rows["    feature_vector"] = per_request_us(
        lambda i: feature_vector(txs[i].amount, txs[i].event_time_ms, p.customer, p.terminal), n
    )
    scorer = service._scorer
    rows["    scorer.score_batch (ONNX)"] = per_request_us(
        lambda i: scorer.score_batch([vectors[i]]), n
    )
    rows["    scorer.explain"] = per_request_us(lambda i: scorer.explain([vectors[i]]), n)
    rows["    decide_with_model (all)"] = per_request_us(
        lambda i: decide_with_model(scorer, [txs[i]], [vectors[i]], "api", [p.cold_start]), n
    )

    def both(i: int) -> Any:
        found = reader.preview_transactions([txs[i]])[0]
        vector = feature_vector(txs[i].amount, txs[i].event_time_ms, found.customer, found.terminal)
        return decide_with_model(scorer, [txs[i]], [vector], "api", [found.cold_start])

    rows["    preview + vector + decide, one loop"] = per_request_us(both, n)
    rows["    preview alone again"] = per_request_us(
        lambda i: reader.preview_transactions([txs[i]]), n
    )
    raw = orjson.dumps({"transaction_id": "t1", "customer_id": "c1", "terminal_id": "x1",
                        "amount": 12.5, "event_time": 1796669954438})  # fmt: skip
    rows["    json_document (stdlib json)"] = per_request_us(lambda i: json_document(raw), n)
    rows["    orjson.loads (for comparison)"] = per_request_us(lambda i: orjson.loads(raw), n)


def _view_stages(
    app: Any, bodies: list[bytes], events: list[Any], rows: dict[str, float], n: int
) -> None:
    """The view's parts, each on its own loop."""
    module = sys.modules["app"]
    web = module.web
    service = module.service()
    txs = [web.transaction(web.body_document(b)) for b in bodies]
    rows["  body parse + validate"] = per_request_us(
        lambda i: web.transaction(web.body_document(bodies[i])), n
    )
    reader = service._reader
    rows["  preview_transactions (Redis)"] = per_request_us(
        lambda i: reader.preview_transactions([txs[i]]), n
    )
    records = [service.score([tx]) for tx in txs[:1]]
    requests = [Request(e) for e in events]

    def view(i: int) -> Any:
        app.current_request = requests[i]
        return module.score()

    rows["  view score() (all below)"] = per_request_us(view, n)
    rows["  ScoringService.score"] = per_request_us(lambda i: service.score([txs[i]]), n)
    _model_stages(service, reader, txs, rows, n)
    rows["  metrics.decided"] = per_request_us(lambda i: module.metrics.decided(records[0]), n)
    rows["  json_response(decision_body)"] = per_request_us(
        lambda i: web.json_response(web.decision_body(records[0][0])), n
    )
    rows["  metrics.observe"] = per_request_us(
        lambda i: module.metrics.observe("/v1/score", "POST", 200, 0.5), n
    )
    rows["  set_correlation_id x2"] = per_request_us(
        lambda i: (module.logger.set_correlation_id("x"), module.logger.set_correlation_id(None)), n
    )


if __name__ == "__main__":
    sys.exit(main())
