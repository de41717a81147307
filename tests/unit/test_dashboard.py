"""Unit tests for the live dashboard's routes and files (chalicelib.dashboard, dashboard_assets/).

The page and its files are open (no API key), typed and cached correctly, hold no key, load
nothing but their own relative files, ship in the API's Lambda zip, and the vendored uPlot is
byte for byte the npm release that VENDORED.md names.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest
from api_doubles import AUTH, KEY, Api, header, serve_api

from kestrel_local.events import load_event

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "functions" / "api"
ASSET_DIR = API_DIR / "chalicelib" / "dashboard_assets"
JS = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"
IMMUTABLE = "public, max-age=31536000, immutable"
# (public name, file, content type, Cache-Control)
SERVED = [
    ("app.js", "app.js", JS, "no-cache"),
    ("app.css", "app.css", CSS, "no-cache"),
    ("uplot-1.6.32.js", "uplot-1.6.32.iife.min.js", JS, IMMUTABLE),
    ("uplot-1.6.32.css", "uplot-1.6.32.min.css", CSS, IMMUTABLE),
]
VENDORED = {
    "uplot-1.6.32.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    "uplot-1.6.32.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
    "uplot-LICENSE": "8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd",
}
# The one URL in the vendored files: uPlot's own banner comment, loaded by nothing.
UPLOT_BANNER = "/*! https://github.com/leeoniya/uPlot (v1.6.32) */"
TEXT_FILES = ["index.html", "app.js", "app.css", *list(VENDORED)[:2]]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    yield from serve_api(monkeypatch)


def dashboard_module() -> ModuleType:
    """chalicelib.dashboard as the app imports it."""
    if str(API_DIR) not in sys.path:
        sys.path.insert(0, str(API_DIR))
    import chalicelib.dashboard

    return chalicelib.dashboard


class Links(HTMLParser):
    """Every URL-valued attribute of a page (src, href, action, ...) and inline scripts/styles."""

    URL_ATTRIBUTES = frozenset({"src", "href", "action", "formaction", "poster", "srcset", "data"})

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.urls += [(tag, k, v or "") for k, v in attrs if k in self.URL_ATTRIBUTES]
        self.inline += [k for k, _ in attrs if k.startswith("on") or k == "style"]
        self._open = tag if tag in {"script", "style"} and "src" not in named else None

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.inline.append(f"<{self._open}> {data.strip()[:40]}")


def page_links() -> Links:
    parser = Links()
    parser.feed((ASSET_DIR / "index.html").read_text(encoding="utf-8"))
    return parser


def test_dashboard_page_is_served_without_a_key_as_html(api: Api) -> None:
    response = api.get("/dashboard", headers={})
    assert response.status_code == 200
    assert header(response, "content-type") == "text/html; charset=utf-8"
    assert header(response, "cache-control") == "no-cache"
    assert header(response, "x-content-type-options") == "nosniff"
    assert header(response, "referrer-policy") == "no-referrer"
    csp = header(response, "content-security-policy") or ""
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe" not in csp
    assert response.body.decode().startswith("<!doctype html>")


@pytest.mark.parametrize(("name", "file", "content_type", "cache"), SERVED)
def test_dashboard_serves_its_files_without_a_key_with_type_and_cache_headers(
    api: Api, name: str, file: str, content_type: str, cache: str
) -> None:
    response = api.get(f"/dashboard/{name}", headers={})
    assert response.status_code == 200
    assert header(response, "content-type") == content_type
    assert header(response, "cache-control") == cache
    assert header(response, "x-content-type-options") == "nosniff"
    assert response.body == (ASSET_DIR / file).read_bytes()


@pytest.mark.parametrize("name", ["nope.js", "index.html", "VENDORED.md", "..%2Fweb.py", "APP.JS"])
def test_dashboard_unknown_file_is_a_404_json_error(api: Api, name: str) -> None:
    response = api.get(f"/dashboard/{name}", headers={})
    assert response.status_code == 404
    assert response.json_body == {
        "error": "not_found", "field": "asset", "problem": "no such dashboard file"
    }  # fmt: skip


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/app.js", "/dashboard/uplot-1.6.32.js"])
def test_dashboard_answers_304_when_the_etag_matches(api: Api, path: str) -> None:
    first = api.get(path, headers={})
    etag = header(first, "etag")
    assert etag and re.fullmatch(r'"[0-9a-f]{32}"', etag)
    again = api.get(path, headers={"If-None-Match": f'"other", W/{etag}'})
    assert again.status_code == 304 and again.body == b""
    assert header(again, "etag") == etag
    assert api.get(path, headers={"If-None-Match": '"other"'}).status_code == 200


def test_dashboard_page_never_holds_the_key(api: Api) -> None:
    without = api.get("/dashboard", headers={})
    with_key = api.get("/dashboard", headers=AUTH)
    assert with_key.body == without.body  # nothing of the request is written into the page
    for path in ["/dashboard", *(f"/dashboard/{name}" for name, *_ in SERVED)]:
        body = api.get(path, headers=AUTH).body.decode()
        assert KEY not in body, path
    script = (ASSET_DIR / "app.js").read_text(encoding="utf-8")
    assert "sessionStorage" in script and 'params.has("key")' in script
    assert "history.replaceState" in script  # the fragment's key leaves the address bar


def test_dashboard_requests_are_counted_as_successes_not_errors(api: Api) -> None:
    for path in ["/dashboard", "/dashboard/app.js", "/dashboard/uplot-1.6.32.css"]:
        assert api.get(path, headers={}).status_code == 200
    text = api.get("/metrics").body.decode()
    dashboard_lines = [line for line in text.splitlines() if 'route="/dashboard' in line]
    requests = [line for line in dashboard_lines if line.startswith("kestrel_api_requests_total")]
    assert sorted(requests) == [
        'kestrel_api_requests_total{method="GET",route="/dashboard",status="200"} 1.0',
        'kestrel_api_requests_total{method="GET",route="/dashboard/{asset}",status="200"} 2.0',
    ]


def test_dashboard_routes_are_exactly_the_open_ones_of_the_module(api: Api) -> None:
    dashboard = dashboard_module()
    web = sys.modules["chalicelib.web"]
    routes = {path for path in api.module.app.routes if path.startswith("/dashboard")}
    assert routes == set(dashboard.PATHS) == {"/dashboard", "/dashboard/{asset}"}
    assert dashboard.PATHS <= web.OPEN_PATHS
    assert not set(dashboard.PATHS) & set(sys.modules["chalicelib.openapi"].SPEC["paths"])
    # The telemetry the page polls still needs the key.
    assert api.get("/v1/telemetry", headers={}).status_code == 403
    assert api.get("/v1/telemetry?window=60").status_code == 200


def test_dashboard_page_loads_only_its_own_relative_files() -> None:
    dashboard = dashboard_module()
    links = page_links()
    assert links.inline == []  # no inline script, style or handler: the CSP forbids them
    loaded = {(tag, attr, url) for tag, attr, url in links.urls}
    assert ("link", "href", "data:,") in loaded  # the empty favicon: no /favicon.ico request
    files = {url for _, _, url in loaded if url != "data:,"}
    assert files == {f"dashboard/{name}" for name in dashboard.ASSETS}
    assert {name for name, *_ in SERVED} == set(dashboard.ASSETS)
    for name, item in dashboard.ASSETS.items():
        assert (ASSET_DIR / item.file).is_file(), name


REMOTE = [
    (re.compile(r"\b(?:https?|wss?|ftp|file):", re.I), "absolute URL"),
    (re.compile(r"""(?:src|href|action|srcset)\s*=\s*["']?\s*//""", re.I), "protocol-relative"),
    (re.compile(r"""url\(\s*["']?\s*(?:/|[a-z]+:)(?!,)""", re.I), "CSS url() not relative"),
    (re.compile(r"@import", re.I), "CSS @import"),
    (re.compile(r"""["'`]\s*//[^/\s"'`]"""), "protocol-relative string"),
    (re.compile(r"""\b(?:importScripts|WebSocket|EventSource|sendBeacon|XMLHttpRequest)\b"""),
     "network API"),
    (re.compile(r"""\bimport\s*\("""), "dynamic import"),
]  # fmt: skip


@pytest.mark.parametrize("file", TEXT_FILES)
def test_dashboard_files_name_no_remote_url(file: str) -> None:
    text = (ASSET_DIR / file).read_text(encoding="utf-8")
    if file.startswith("uplot-"):
        assert text.count(UPLOT_BANNER) == (1 if file.endswith(".js") else 0)
        text = text.replace(UPLOT_BANNER, "")
    found = [(why, m.group(0)) for pattern, why in REMOTE for m in pattern.finditer(text)]
    assert found == []


def test_dashboard_remote_url_scan_catches_remote_sources() -> None:
    # The scan above must see what a careless edit would add.
    samples = [
        '<script src="https://cdn.jsdelivr.net/npm/uplot"></script>',
        '<link href="//unpkg.com/uplot/dist/uPlot.min.css">',
        "fetch('//evil.example/x')",
        "@import 'theme.css';",
        "background: url(/img/bg.png)",
        'new WebSocket("ws://127.0.0.1:1")',
    ]
    for sample in samples:
        assert any(pattern.search(sample) for pattern, _ in REMOTE), sample
    for fine in ['<script src="dashboard/app.js">', "// a comment", '<link href="data:,">']:
        assert not any(pattern.search(fine) for pattern, _ in REMOTE), fine


def test_dashboard_script_polls_the_relative_telemetry_url_with_the_key_header() -> None:
    script = (ASSET_DIR / "app.js").read_text(encoding="utf-8")
    assert script.count("fetch(") == 1
    assert 'new URL("v1/telemetry?window=" + windowS, document.baseURI)' in script
    assert '"x-api-key": key' in script and 'credentials: "omit"' in script
    assert "POLL_MS = 2000" in script


def test_dashboard_time_axes_tick_in_whole_seconds_and_keep_their_labels() -> None:
    # The labels read HH:mm:ss: a sub-second tick step labelled every tick of the freshness chart
    # with the same time. tests/e2e reads the drawn labels back from data-x-ticks.
    script = (ASSET_DIR / "app.js").read_text(encoding="utf-8")
    found = re.search(r"const TIME_INCRS = (\[[^\]]*\]);", script)
    assert found is not None
    incrs = json.loads(found.group(1))
    assert incrs == sorted(set(incrs)) and all(isinstance(i, int) and i >= 1 for i in incrs)
    assert 'uPlot.fmtDate("{HH}:{mm}:{ss}")' in script and "incrs: TIME_INCRS" in script
    assert script.count("axes: [timeAxis,") == 3  # the events, freshness and clicks charts
    assert "dataset.xTicks = JSON.stringify(labels)" in script
    assert re.search(r"FRESHNESS_SPAN_S = (\d+);", script)  # a minute at least, not one poll


CLICK_ELEMENTS = {
    "clicks-per-s", "clicks-mean", "click-freshness-p50", "click-freshness-p99",
    "click-freshness-count", "propensity-mean", "propensity-count", "propensity-model",
    "chart-clicks", "chart-propensity",
}  # fmt: skip


def test_dashboard_page_has_the_clickstream_figures_the_script_fills() -> None:
    page = (ASSET_DIR / "index.html").read_text(encoding="utf-8")
    script = (ASSET_DIR / "app.js").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([^"]+)"', page))
    assert ids >= CLICK_ELEMENTS
    filled = set(re.findall(r'(?:show|setData|chart)\("([a-z0-9-]+)"', script))
    assert filled >= CLICK_ELEMENTS, CLICK_ELEMENTS - filled
    # Drawn from the clickstream part of the telemetry answer, only when it has one.
    assert "if (t.clickstream) renderClicks(t.clickstream);" in script
    assert "c.propensity_histogram" in script and "c.events_per_s" in script


@pytest.mark.parametrize(("file", "sha256"), sorted(VENDORED.items()))
def test_dashboard_vendored_files_are_the_pinned_release(file: str, sha256: str) -> None:
    assert hashlib.sha256((ASSET_DIR / file).read_bytes()).hexdigest() == sha256
    notes = (ASSET_DIR / "VENDORED.md").read_text(encoding="utf-8")
    assert f"| `{file}` |" in notes and f"`{sha256}`" in notes
    assert dashboard_module().UPLOT_VERSION in file or file == "uplot-LICENSE"


def test_dashboard_files_ship_in_the_api_function_zip() -> None:
    sys.path.insert(0, str(REPO / "tools"))
    import lambda_artifacts

    shipped = {name for name, _ in lambda_artifacts.collect_files(API_DIR)}
    dashboard = dashboard_module()
    wanted = {f"chalicelib/dashboard_assets/{i.file}" for i in dashboard.ASSETS.values()}
    wanted |= {"chalicelib/dashboard.py", "chalicelib/dashboard_assets/index.html",
               "chalicelib/dashboard_assets/uplot-LICENSE"}  # fmt: skip
    assert wanted <= shipped


@pytest.mark.parametrize(
    ("event", "status", "content_type"),
    [("api-dashboard.json", 200, "text/html; charset=utf-8"),
     ("api-dashboard-asset.json", 200, JS)],
)  # fmt: skip
def test_dashboard_sample_events_are_served_by_the_lambda_handler(
    api: Api, event: str, status: int, content_type: str
) -> None:
    # app.app is the Lambda handler: API Gateway's proxy event in, its response out.
    response = api.module.app(load_event(REPO / "events" / event), None)
    assert response["statusCode"] == status
    assert response["headers"]["Content-Type"] == content_type
    assert response.get("isBase64Encoded", False) is False
