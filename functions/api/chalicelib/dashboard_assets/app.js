// Kestrel live dashboard: polls v1/telemetry every 2 s and draws it (uPlot, vendored): the
// transactions' figures, then the clickstream's (events/s, freshness, propensity distribution).
// The API key comes from the URL fragment (#key=...) or the form, lives in sessionStorage
// only, and is sent as x-api-key. Nothing here names a host: every URL is relative.
"use strict";

(function () {
  const POLL_MS = 2000;
  const DEFAULT_WINDOW_S = 120;
  const MAX_WINDOW_S = 3600;
  const HISTORY = 180; // freshness points kept (6 minutes at one per poll)
  const KEY_STORE = "kestrel.dashboard.apiKey";
  const DECISIONS = [["approve", "Approve"], ["review", "Review"], ["decline", "Decline"]];
  const $ = (id) => document.getElementById(id);
  const body = document.body;

  let violations = 0;
  body.dataset.cspViolations = "0";
  document.addEventListener("securitypolicyviolation", (event) => {
    violations += 1;
    body.dataset.cspViolations = String(violations);
    console.error("blocked by the Content-Security-Policy:", event.blockedURI);
  });

  // --- settings from the fragment, the key kept out of the address bar -----------------
  let memoryKey = "";
  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch (err) {
      return memoryKey;
    }
  }
  function storeKey(key) {
    memoryKey = key;
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      else sessionStorage.removeItem(KEY_STORE);
    } catch (err) {
      // storage disabled: the key lives in this page only
    }
  }
  let windowS = DEFAULT_WINDOW_S;
  function readFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.has("key")) {
      storeKey(params.get("key").trim());
      params.delete("key");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    }
    const asked = Number(params.get("window"));
    windowS = Number.isInteger(asked) && asked >= 1 && asked <= MAX_WINDOW_S ? asked : DEFAULT_WINDOW_S;
    $("window").textContent = windowS + " s";
  }

  // --- formatting ---------------------------------------------------------------------
  const dash = "–";
  const fixed = (v, digits) => v.toLocaleString("en-US", {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
  const fmtRate = (v) => (v == null ? dash : fixed(v, v >= 1000 ? 0 : 1));
  const fmtCount = (v) => (v == null ? "n/a" : fixed(v, 0));
  const fmtMs = (v) => (v == null ? dash : v >= 1000 ? fixed(v / 1000, 2) + " s" : fixed(v, 1) + " ms");
  const fmtPercent = (v) => (v == null ? dash : fixed(v * 100, 2) + " %");
  function show(id, value, text) {
    const el = $(id);
    el.textContent = text;
    el.dataset.value = value == null ? "" : String(value);
    return el;
  }

  // --- charts -------------------------------------------------------------------------
  const CHART_H = 220;
  // Time-axis tick steps, in seconds: whole seconds only, since the labels read HH:mm:ss. With
  // uPlot's sub-second steps a span of a few seconds was labelled with the same time on every tick.
  const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  const FRESHNESS_SPAN_S = 60; // the freshness chart shows at least the last minute of polls
  const charts = {};
  const freshness = [[], [], []]; // poll time (s), p50, p99
  function chart(id, options, data) {
    const el = $(id);
    const plot = new uPlot(Object.assign({ width: el.clientWidth || 480, height: CHART_H }, options), data, el);
    new ResizeObserver(() => plot.setSize({ width: el.clientWidth, height: CHART_H })).observe(el);
    charts[id] = plot;
    return plot;
  }
  function setData(id, data) {
    charts[id].setData(data);
    $(id).dataset.points = String(data[0].length);
  }
  function makeCharts() {
    const axis = { stroke: "#475569", grid: { stroke: "#e2e8f0" }, ticks: { stroke: "#cbd5e1" } };
    const clock = uPlot.fmtDate("{HH}:{mm}:{ss}");
    // The labels drawn last are kept on the chart's element (data-x-ticks): the canvas hides them.
    const timeAxis = Object.assign({
      incrs: TIME_INCRS,
      values: (u, ticks) => {
        const labels = ticks.map((s) => clock(new Date(s * 1000)));
        u.root.parentElement.dataset.xTicks = JSON.stringify(labels);
        return labels;
      },
    }, axis);
    const timeSeries = { label: "time", value: (u, s) => (s == null ? dash : clock(new Date(s * 1000))) };
    chart("chart-events", {
      series: [timeSeries, { label: "events/s", stroke: "#2563eb", fill: "rgba(37,99,235,0.12)", width: 1.5 }],
      axes: [timeAxis, Object.assign({ size: 56 }, axis)],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    }, [[], []]);
    chart("chart-freshness", {
      series: [timeSeries,
        { label: "p50 ms", stroke: "#16a34a", width: 1.5, spanGaps: true },
        { label: "p99 ms", stroke: "#dc2626", width: 1.5, spanGaps: true }],
      axes: [timeAxis, Object.assign({ size: 56 }, axis)],
      scales: {
        // Polls come every 2 s: a minute at least, ending at the last poll, like the events chart.
        x: { time: true, range: (u, min, max) => (max == null ? [min, max]
          : [Math.min(min, max - FRESHNESS_SPAN_S), max]) },
        y: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.1)] },
      },
    }, freshness);
    chart("chart-clicks", {
      series: [timeSeries, { label: "clicks/s", stroke: "#0891b2", fill: "rgba(8,145,178,0.12)", width: 1.5 }],
      axes: [timeAxis, Object.assign({ size: 56 }, axis)],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    }, [[], []]);
    chart("chart-propensity", {
      scales: { x: { time: false, range: [0, 1] }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      series: [{ label: "propensity", value: (u, v) => (v == null ? dash : v.toFixed(3)) },
        { label: "clicks", stroke: "#ea580c", fill: "rgba(234,88,12,0.35)",
          paths: uPlot.paths.bars({ size: [0.9, Infinity] }), points: { show: false } }],
      axes: [Object.assign({ values: (u, ticks) => ticks.map((t) => t.toFixed(1)) }, axis),
        Object.assign({ size: 56 }, axis)],
    }, [[], []]);
    chart("chart-scores", {
      scales: { x: { time: false, range: [0, 1] }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      series: [{ label: "score", value: (u, v) => (v == null ? dash : v.toFixed(3)) },
        { label: "transactions", stroke: "#7c3aed", fill: "rgba(124,58,237,0.35)",
          paths: uPlot.paths.bars({ size: [0.9, Infinity] }), points: { show: false } }],
      axes: [Object.assign({ values: (u, ticks) => ticks.map((t) => t.toFixed(1)) }, axis),
        Object.assign({ size: 56 }, axis)],
    }, [[], []]);
  }
  function makeBars() {
    const host = $("decisions");
    for (const [name, label] of DECISIONS) {
      const row = document.createElement("div");
      row.className = "bar-row " + name;
      row.innerHTML = '<span class="bar-label"></span><span class="bar-track"><span class="bar-fill"></span>' +
        '</span><span class="bar-count"></span>';
      row.querySelector(".bar-label").textContent = label;
      row.querySelector(".bar-count").id = "decision-" + name;
      host.appendChild(row);
    }
  }

  // --- rendering one telemetry snapshot ------------------------------------------------
  function render(t) {
    const rate = t.events_per_s;
    show("events-per-s", rate.current, fmtRate(rate.current));
    show("events-mean", rate.mean, fmtRate(rate.mean));
    const f = t.freshness_ms;
    show("freshness-p50", f.p50, fmtMs(f.p50));
    show("freshness-p99", f.p99, fmtMs(f.p99));
    show("freshness-max", f.max, fmtMs(f.max));
    show("freshness-count", f.count, fmtCount(f.count));
    show("fraud-rate", t.fraud_rate, fmtPercent(t.fraud_rate));
    show("labels", t.labels, fmtCount(t.labels));
    for (const [role, id] of [["poison", "dlq-poison"], ["on_failure", "dlq-on-failure"]]) {
      const depth = t.dlq[role];
      show(id, depth, fmtCount(depth)).classList.toggle("alert", depth > 0);
    }
    show("model-version", t.model_version, t.model_version || "none yet");
    const drift = t.drift || { status: "unknown" };
    const badge = show("drift-status", drift.status, drift.status);
    badge.className = "badge " + (["ok", "watch", "drift"].includes(drift.status) ? drift.status : "unknown");
    badge.title = [drift.checked_at && "checked " + drift.checked_at,
      drift.psi_max != null && "PSI max " + drift.psi_max,
      drift.drifted && drift.drifted.length && "drifted: " + drift.drifted.join(", ")]
      .filter(Boolean).join(" · ") || "no drift check yet";
    const updated = $("updated");
    updated.dateTime = t.generated_at;
    updated.textContent = new Date(t.generated_at).toLocaleTimeString("en-GB", { hour12: false });
    body.dataset.generatedAt = t.generated_at;

    const total = DECISIONS.reduce((sum, [name]) => sum + (t.decisions[name] || 0), 0);
    for (const [name] of DECISIONS) {
      const n = t.decisions[name] || 0;
      const share = total ? n / total : 0;
      const count = show("decision-" + name, n, fmtCount(n) + (total ? " (" + fixed(share * 100, 1) + " %)" : ""));
      count.parentElement.querySelector(".bar-fill").style.width = (share * 100).toFixed(2) + "%";
    }

    // The window's last second is still filling: the chart shows the complete ones.
    const series = rate.series.slice(0, -1);
    setData("chart-events", [series.map((_, i) => rate.start_s + i), series]);
    const at = Date.parse(t.generated_at) / 1000;
    if (!freshness[0].length || at > freshness[0][freshness[0].length - 1]) {
      freshness[0].push(at);
      freshness[1].push(f.p50);
      freshness[2].push(f.p99);
      if (freshness[0].length > HISTORY) freshness.forEach((column) => column.shift());
    }
    setData("chart-freshness", freshness);
    const edges = t.score_histogram.edges;
    const centers = t.score_histogram.counts.map((_, i) => (edges[i] + edges[i + 1]) / 2);
    setData("chart-scores", [centers, t.score_histogram.counts]);
    if (t.clickstream) renderClicks(t.clickstream);
    return t.last_batch_at ? Math.max(0, Math.round((Date.now() - Date.parse(t.last_batch_at)) / 1000)) : null;
  }

  // The clickstream's part of the snapshot: rates, freshness, the propensity histogram.
  function renderClicks(c) {
    const rate = c.events_per_s;
    show("clicks-per-s", rate.current, fmtRate(rate.current));
    show("clicks-mean", rate.mean, fmtRate(rate.mean));
    const f = c.freshness_ms;
    show("click-freshness-p50", f.p50, fmtMs(f.p50));
    show("click-freshness-p99", f.p99, fmtMs(f.p99));
    show("click-freshness-count", f.count, fmtCount(f.count));
    const h = c.propensity_histogram;
    const centers = h.counts.map((_, i) => (h.edges[i] + h.edges[i + 1]) / 2);
    const scored = h.counts.reduce((sum, n) => sum + n, 0);
    // The mean from the bins' centres: the histogram is all the telemetry keeps.
    const mean = scored ? centers.reduce((sum, x, i) => sum + x * h.counts[i], 0) / scored : null;
    show("propensity-mean", mean, mean == null ? dash : mean.toFixed(3));
    show("propensity-count", scored, fmtCount(scored));
    show("propensity-model", c.model_version, c.model_version || "none yet");
    const series = rate.series.slice(0, -1);
    setData("chart-clicks", [series.map((_, i) => rate.start_s + i), series]);
    setData("chart-propensity", [centers, h.counts]);
  }

  // --- status line, key form, polling ------------------------------------------------
  function status(state, text) {
    body.dataset.state = state;
    const line = $("status");
    line.className = "status " + state;
    line.textContent = text;
  }
  function askForKey(text) {
    clearTimeout(timer); // polls resume when a key is entered
    status("key-needed", text);
    $("key-form").hidden = false;
    $("key-input").focus();
  }
  let timer = null;
  let polls = 0;
  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  }
  async function problem(response) {
    try {
      const doc = await response.json();
      return doc.problem || doc.message || "";
    } catch (err) {
      return "";
    }
  }
  async function poll() {
    const key = storedKey();
    const url = new URL("v1/telemetry?window=" + windowS, document.baseURI);
    let response;
    try {
      response = await fetch(url, {
        headers: key ? { "x-api-key": key } : {}, cache: "no-store", credentials: "omit",
      });
    } catch (err) {
      status("error", "Cannot reach the API (" + err.message + "); retrying every 2 s.");
      schedule(POLL_MS);
      return;
    }
    if (response.status === 401 || response.status === 403) {
      askForKey(key
        ? "The API refused this key (" + response.status + "). Enter the right one."
        : "The API needs a key (" + response.status + "). Enter it below or open /dashboard#key=<key>.");
      return; // no more polls until a key is entered
    }
    if (!response.ok) {
      const why = await problem(response);
      status("error", "Telemetry answered " + response.status + (why ? ": " + why : "") + "; retrying every 2 s.");
      schedule(POLL_MS);
      return;
    }
    let idle = null;
    try {
      idle = render(await response.json());
    } catch (err) {
      status("error", "Could not show the telemetry: " + err.message);
      schedule(POLL_MS);
      return;
    }
    polls += 1;
    body.dataset.polls = String(polls);
    const since = idle == null ? "no batch handled yet" : idle > 10 ? "last batch " + idle + " s ago (stream idle?)" : "stream flowing";
    status("live", "Live · every 2 s · " + since + ".");
    schedule(POLL_MS);
  }

  function start() {
    readFragment();
    makeCharts();
    makeBars();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("key-input");
      storeKey(input.value.trim());
      input.value = "";
      $("key-form").hidden = true;
      status("loading", "Connecting…");
      schedule(0);
    });
    $("key-forget").addEventListener("click", () => {
      storeKey("");
      askForKey("Key forgotten. Enter a key to go on.");
    });
    $("key-button").addEventListener("click", () => askForKey("Enter the API key."));
    window.addEventListener("hashchange", () => {
      readFragment();
      $("key-form").hidden = true;
      schedule(0);
    });
    status("loading", "Connecting…");
    schedule(0);
  }

  if (typeof uPlot === "undefined") {
    status("error", "The chart library did not load (dashboard/uplot-1.6.32.js).");
  } else {
    start();
  }
})();
