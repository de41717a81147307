"""The dashboard in a real browser: headless Chromium on `GET /dashboard` of a live local stack.

Transactions and clicks keep streaming through Kestrel's template on the emulator (the local
Lambda runtime's TransactionsFunction, LabelsFunction and ClickstreamFunction, real Redis)
while Chromium loads the page through a loopback proxy that records every exchange. The
dumped DOM must show exactly the numbers of the `/v1/telemetry` answer the page rendered
last (found by its `generated_at`): a live events/s above zero, freshness, decisions, fraud
rate, DLQ depths, the model version and the drift status, and for the clickstream live
clicks/s, click freshness, the propensity model and the propensity distribution, with
uPlot's canvases drawn. A screenshot is kept in
``test-artifacts/dashboard.png``. Chromium missing fails the test (never a skip).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from api_harness import ApiServer, provision, put_transactions, running_api, transaction
from browser_harness import CHROMIUM_HINT, Dom, RecordingProxy, find_chromium, run_chromium
from esm_harness import wait_until

from kestrel.adapters.redis_telemetry import RedisDriftStatus
from kestrel.settings import LocalSettings
from kestrel_local.aws import AwsClients
from kestrel_local.runtime import LocalRuntime

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
N_WARM, N_POISON, N_LABELS, N_FRAUDS, N_CLICKS = 200, 3, 12, 5, 60
FEED_BATCH, FEED_EVERY_S = 10, 0.2  # about 50 events/s while the browser looks
WINDOW_S = 600
DRIFT = {"status": "watch", "checked_at": "2026-11-29T10:00:00.000Z", "psi_max": 0.14,
         "drifted": [], "watch": ["amount"]}  # fmt: skip
PAGE_FILES = {"/dashboard", "/dashboard/app.js", "/dashboard/app.css",
              "/dashboard/uplot-1.6.32.js", "/dashboard/uplot-1.6.32.css"}  # fmt: skip
CHROMIUM_WINDOW = "--window-size=1440,1000"
SHOT_WINDOW = "--window-size=1440,1480"  # the screenshot shows the clickstream's charts too


@dataclass
class LiveStack:
    """The stack while it streams: the API, the recording proxy in front of it, Redis."""

    api: ApiServer
    proxy: RecordingProxy
    store: redis.Redis
    fed: list[int]


class Feeder(threading.Thread):
    """Puts FEED_BATCH new transactions and as many clicks on their streams every FEED_EVERY_S
    until stopped."""

    def __init__(self, clients: AwsClients, stream: str, clickstream: str) -> None:
        super().__init__(name="feeder", daemon=True)
        self.clients, self.stream, self.clickstream = clients, stream, clickstream
        self.stop_event = threading.Event()
        self.count = [0]
        self.clicks = 0
        self.error: BaseException | None = None

    def put_clicks(self, n: int) -> None:
        """Put `n` new clicks now: sessions of page views, product views and cart adds."""
        now_ms, first = int(time.time() * 1000), self.clicks
        kinds = ("page_view", "product_view", "product_view", "add_to_cart")
        docs = []
        for i in range(first, first + n):
            kind = kinds[i % len(kinds)]
            doc: dict[str, Any] = {
                "event_id": f"DBC-{i:06d}", "user_id": f"U-DB{i % 25}",
                "session_id": f"U-DB{i % 25}-S{i // 100}", "event_type": kind,
                "event_time": now_ms,
            }  # fmt: skip
            if kind != "page_view":
                doc |= {"product_id": f"P-{i % 30}", "category": f"cat{i % 4}",
                        "price": float(10 + (i * 13) % 190)}  # fmt: skip
            docs.append(doc)
        put_transactions(self.clients, self.clickstream, docs, partition_key="clicks")
        self.clicks += n

    def put(self, n: int) -> list[dict[str, Any]]:
        """Put `n` new transactions now (amounts spread so every decision type occurs)."""
        now_ms, first = int(time.time() * 1000), self.count[0]
        txs = [
            transaction(f"DB-{i:06d}", f"C-DB{i % 40}", f"TERM-DB{i % 15}",
                        float(5 + (i * 37) % 290), now_ms)
            for i in range(first, first + n)
        ]  # fmt: skip
        put_transactions(self.clients, self.stream, txs)
        self.count[0] += n
        return txs

    def run(self) -> None:
        try:
            while not self.stop_event.wait(FEED_EVERY_S):
                self.put(FEED_BATCH)
                self.put_clicks(FEED_BATCH)
        except Exception as exc:
            self.error = exc  # the module's teardown reports it
            raise


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary, or a failure saying how to install it."""
    binary = find_chromium()
    if binary is None:
        pytest.fail(CHROMIUM_HINT, pytrace=False)
    return binary


@pytest.fixture(scope="module")
def live(
    emulator_endpoint: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveStack]:
    """Redis database 12: flushed, streamed into while the tests run, flushed at the end."""
    work = tmp_path_factory.mktemp("dashboard")
    url = redis_url.rsplit("/", 1)[0] + "/12"
    store = redis.Redis.from_url(url)
    store.flushdb()
    app, clients = provision(emulator_endpoint, url, prefix="db")
    settings = LocalSettings.from_env(
        {"KESTREL_RUN_DIR": str(work / "run"), "AWS_ENDPOINT_URL": emulator_endpoint,
         "KESTREL_POLL_INTERVAL_S": "0.02"}
    )  # fmt: skip
    runtime = LocalRuntime(
        app, clients, settings,
        only=["TransactionsFunction", "LabelsFunction", "ClickstreamFunction"],
        log_dir=work / "logs",
    )  # fmt: skip
    runtime.start()
    stream = app.stack.physical["TransactionsStream"].ref
    clickstream = app.stack.physical["ClickstreamStream"].ref
    feeder = Feeder(AwsClients(emulator_endpoint), stream, clickstream)
    proxy: RecordingProxy | None = None
    try:
        txs = feeder.put(N_WARM)
        feeder.put_clicks(N_CLICKS)
        kinesis = clients.client("kinesis")
        poison = [{"Data": b"\xff not json", "PartitionKey": f"P{i}"} for i in range(N_POISON)]
        assert kinesis.put_records(StreamName=stream, Records=poison)["FailedRecordCount"] == 0
        labels = [
            {"Data": json.dumps({
                "transaction_id": t["transaction_id"], "customer_id": t["customer_id"],
                "terminal_id": t["terminal_id"], "is_fraud": i < N_FRAUDS,
                "label_time": int(time.time() * 1000)}).encode(),
             "PartitionKey": str(t["customer_id"])}
            for i, t in enumerate(txs[:N_LABELS])
        ]  # fmt: skip
        labels_stream = app.stack.physical["LabelsStream"].ref
        reply = kinesis.put_records(StreamName=labels_stream, Records=labels)
        assert reply["FailedRecordCount"] == 0
        by_function = {m.spec.logical_id: m for m in runtime.kinesis}
        for name, count in {"TransactionsFunction": N_WARM + N_POISON,
                            "LabelsFunction": N_LABELS,
                            "ClickstreamFunction": N_CLICKS}.items():  # fmt: skip
            mapping = by_function[name]
            wait_until(
                lambda m=mapping, c=count: m.stats.succeeded >= c,  # type: ignore[misc]
                timeout_s=120, what=f"{count} records handled by {name}",
            )  # fmt: skip
        RedisDriftStatus(store).publish(DRIFT, ttl_s=900)
        feeder.start()
        with running_api(app, emulator_endpoint, url, work / "api") as api:
            proxy = RecordingProxy((api.host, api.port)).start()
            time.sleep(6 * FEED_EVERY_S + 5)  # the 5 s events/s span fills with the live feed
            yield LiveStack(api, proxy, store, feeder.count)
        assert feeder.error is None, f"the feeder failed: {feeder.error!r}"
    finally:
        feeder.stop_event.set()
        if feeder.is_alive():
            feeder.join(timeout=10)
        if proxy is not None:
            proxy.stop()
        runtime.stop()
        store.flushdb()
        store.close()


def _value(dom: Dom, element_id: str) -> Any:
    """An element's data-value as the JSON number it came from (None when empty)."""
    raw = dom[element_id].attrs.get("data-value")
    assert raw is not None, f"#{element_id} has no data-value: {dom[element_id]}"
    return None if raw == "" else float(raw)


def test_dashboard_in_chromium_shows_the_live_telemetry_it_polled(
    live: LiveStack, chromium: str, tmp_path: Path
) -> None:
    start = len(live.proxy.recorded())
    page = f"{live.proxy.url}/dashboard#key={live.api.key}&window={WINDOW_S}"
    html = run_chromium(
        chromium, tmp_path / "profile", page, CHROMIUM_WINDOW, "--virtual-time-budget=9000",
        "--dump-dom",
    )  # fmt: skip
    exchanges = live.proxy.recorded()[start:]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard.html").write_text(html, encoding="utf-8")
    dom = Dom(html)

    # The page went live and polled more than once, and the browser blocked nothing.
    assert dom.body.get("data-state") == "live", dom["status"].text
    assert int(dom.body["data-polls"]) >= 2
    assert dom.body["data-csp-violations"] == "0"
    assert live.api.key not in html

    # It fetched its own files without the key, then the telemetry with it, nothing else.
    polls = [e for e in exchanges if e.path.startswith("/v1/")]
    assert {e.path for e in exchanges if e not in polls} == PAGE_FILES
    assert all(e.api_key is None and e.status == 200 for e in exchanges if e not in polls)
    assert {e.path for e in polls} == {f"/v1/telemetry?window={WINDOW_S}"}
    assert all(e.api_key == live.api.key and e.status == 200 for e in polls)
    # Every answer was drawn, but maybe the one that arrived as the virtual time ran out.
    assert int(dom.body["data-polls"]) in {len(polls), len(polls) - 1}

    # The numbers on screen are one answer's, the last or the one before: a live stream.
    shown = dom.body["data-generated-at"]
    answers = {b["generated_at"]: b for b in (json.loads(e.body) for e in polls)}
    assert shown in sorted(answers)[-2:]
    t = answers[shown]
    assert t["window_s"] == WINDOW_S
    assert t["events_per_s"]["current"] > 0, "no live events while the page polled"
    assert _value(dom, "events-per-s") == t["events_per_s"]["current"]
    assert _value(dom, "events-mean") == t["events_per_s"]["mean"]
    assert dom["events-per-s"].text == f"{t['events_per_s']['current']:,.1f}"
    assert _value(dom, "freshness-p50") == t["freshness_ms"]["p50"] > 0
    assert _value(dom, "freshness-p99") == t["freshness_ms"]["p99"] >= t["freshness_ms"]["p50"]
    assert dom["freshness-p50"].text.endswith((" ms", " s"))
    assert t["counts"]["events"] >= N_WARM
    for decision, count in t["decisions"].items():
        assert _value(dom, f"decision-{decision}") == count
    assert sum(t["decisions"].values()) > 0
    assert t["labels"] == N_LABELS and t["fraud_rate"] == round(N_FRAUDS / N_LABELS, 6)
    assert _value(dom, "fraud-rate") == t["fraud_rate"]
    assert dom["fraud-rate"].text == f"{100 * N_FRAUDS / N_LABELS:.2f} %"
    assert t["dlq"] == {"poison": N_POISON, "on_failure": 0}
    assert _value(dom, "dlq-poison") == N_POISON and _value(dom, "dlq-on-failure") == 0
    assert "alert" in dom["dlq-poison"].attrs["class"].split()
    assert t["model_version"] and dom["model-version"].text == t["model_version"]
    assert t["drift"]["status"] == "watch" and dom["drift-status"].text == "watch"
    assert "watch" in dom["drift-status"].attrs["class"].split()

    # The clickstream's figures are that answer's clickstream part: live clicks, freshness up
    # to the propensity stored, and every click's propensity in the distribution.
    c = t["clickstream"]
    assert c["events_per_s"]["current"] > 0, "no live clicks while the page polled"
    assert _value(dom, "clicks-per-s") == c["events_per_s"]["current"]
    assert dom["clicks-per-s"].text == f"{c['events_per_s']['current']:,.1f}"
    assert _value(dom, "clicks-mean") == c["events_per_s"]["mean"]
    assert _value(dom, "click-freshness-p50") == c["freshness_ms"]["p50"] > 0
    assert _value(dom, "click-freshness-p99") == c["freshness_ms"]["p99"]
    assert c["freshness_ms"]["p99"] >= c["freshness_ms"]["p50"]
    assert _value(dom, "click-freshness-count") == c["freshness_ms"]["count"] >= N_CLICKS
    scored = sum(c["propensity_histogram"]["counts"])
    assert scored >= N_CLICKS and _value(dom, "propensity-count") == scored
    edges, counts = c["propensity_histogram"]["edges"], c["propensity_histogram"]["counts"]
    mean = sum((edges[i] + edges[i + 1]) / 2 * n for i, n in enumerate(counts)) / scored
    assert _value(dom, "propensity-mean") == pytest.approx(mean, abs=1e-9)
    assert dom["propensity-mean"].text == f"{mean:.3f}"
    assert c["model_version"] and dom["propensity-model"].text == c["model_version"]
    assert int(dom["chart-propensity"].attrs["data-points"]) == len(counts) == 20
    assert int(dom["chart-clicks"].attrs["data-points"]) == WINDOW_S - 1

    # The charts are drawn: uPlot's canvases, with the window's points.
    assert dom.tags.get("canvas", 0) >= 5
    assert int(dom["chart-events"].attrs["data-points"]) == WINDOW_S - 1
    assert int(dom["chart-scores"].attrs["data-points"]) == len(t["score_histogram"]["counts"])
    assert int(dom["chart-freshness"].attrs["data-points"]) >= 1
    # Both time axes read like a clock: HH:MM:SS, a different time on every tick (the freshness
    # chart once labelled all its ticks with the same second). app.js keeps the drawn labels.
    for chart in ("chart-events", "chart-freshness", "chart-clicks"):
        ticks = json.loads(dom[chart].attrs["data-x-ticks"])
        assert len(ticks) >= 3, f"{chart}: {ticks}"
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d", tick) for tick in ticks), f"{chart}: {ticks}"
        assert len(set(ticks)) == len(ticks), f"{chart} repeats tick labels: {ticks}"

    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    run_chromium(
        chromium, tmp_path / "profile-shot", page, SHOT_WINDOW,
        "--virtual-time-budget=7000", f"--screenshot={shot}",
    )  # fmt: skip
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000, "the screenshot looks empty"
    print(f"dashboard screenshot: {shot}")


@pytest.mark.parametrize(
    ("fragment", "message"),
    [("#key=not-the-key", "The API refused this key (403)"), ("", "The API needs a key (403)")],
    ids=["wrong-key", "no-key"],
)
def test_dashboard_in_chromium_asks_for_the_key_when_the_api_refuses_it(
    live: LiveStack, chromium: str, tmp_path: Path, fragment: str, message: str
) -> None:
    start = len(live.proxy.recorded())
    html = run_chromium(
        chromium, tmp_path / "profile", f"{live.proxy.url}/dashboard{fragment}",
        CHROMIUM_WINDOW, "--virtual-time-budget=5000", "--dump-dom",
    )  # fmt: skip
    dom = Dom(html)
    polls = [e for e in live.proxy.recorded()[start:] if e.path.startswith("/v1/")]
    assert dom.body.get("data-state") == "key-needed"
    assert dom["status"].text.startswith(message)
    assert "hidden" not in dom["key-form"].attrs
    assert "data-generated-at" not in dom.body and dom["events-per-s"].text == "\u2013"
    # One refused poll, then it waits for a key instead of hammering the API.
    assert [(e.status, e.api_key) for e in polls] == [(403, fragment.partition("=")[2] or None)]
