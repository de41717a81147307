"""The live dashboard: one HTML page and its static files, served without the API key.

The page holds no key. Its script reads the key from the URL fragment
(``/dashboard#key=<key>``: browsers never send a fragment to the server, so it is in no
request and no access log) or from a form, keeps it in the tab's sessionStorage, removes it
from the address bar and sends it as ``x-api-key`` when it polls ``v1/telemetry`` every 2 s
(a relative URL, so an API Gateway stage prefix is kept). Every file it loads is in
``dashboard_assets/`` (uPlot vendored, see VENDORED.md there); its Content-Security-Policy
lets the browser load nothing from anywhere else.

The routes are open (``web.OPEN_PATHS``, ``ApiKeyRequired: false`` on API Gateway) and are
not in the OpenAPI document: they serve a user interface, not API operations.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from chalice.app import Request, Response

from chalicelib import web

ASSET_DIR = Path(__file__).with_name("dashboard_assets")
PAGE_PATH = "/dashboard"
ASSET_PATH = "/dashboard/{asset}"
PATHS = frozenset({PAGE_PATH, ASSET_PATH})  # open, and not in the OpenAPI document
UPLOT_VERSION = "1.6.32"

JS = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"
HTML = "text/html; charset=utf-8"
# Versioned file names never change content: cache them for a year. The rest revalidate
# (ETag, 304) so a deploy shows at once.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """A file of ``dashboard_assets/`` and how it is served."""

    file: str
    content_type: str
    cache_control: str


PAGE = Asset("index.html", HTML, REVALIDATE)
ASSETS: dict[str, Asset] = {
    "app.js": Asset("app.js", JS, REVALIDATE),
    "app.css": Asset("app.css", CSS, REVALIDATE),
    f"uplot-{UPLOT_VERSION}.js": Asset(f"uplot-{UPLOT_VERSION}.iife.min.js", JS, IMMUTABLE),
    f"uplot-{UPLOT_VERSION}.css": Asset(f"uplot-{UPLOT_VERSION}.min.css", CSS, IMMUTABLE),
}


@cache
def _content(file: str) -> tuple[str, str]:
    """A file's text and its strong ETag (read once per container)."""
    text = (ASSET_DIR / file).read_text(encoding="utf-8")
    return text, '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def _serve(item: Asset, request: Request) -> Response:
    """The file, or 304 when the request's If-None-Match holds its ETag."""
    text, etag = _content(item.file)
    headers: dict[str, str | list[str]] = {
        "Content-Type": item.content_type,
        "Cache-Control": item.cache_control,
        "ETag": etag,
        **SECURITY_HEADERS,
    }
    if item.content_type == HTML:
        headers["Content-Security-Policy"] = CSP
    tags = (request.headers.get("if-none-match") or "").split(",")
    if etag in {tag.strip().removeprefix("W/") for tag in tags}:
        return Response(body="", status_code=304, headers=headers)
    return Response(body=text, status_code=200, headers=headers)


def page(request: Request) -> Response:
    """The dashboard's HTML page."""
    return _serve(PAGE, request)


def asset(name: str, request: Request) -> Response:
    """One of the page's files by its public name, or a 404 JSON error."""
    item = ASSETS.get(name)
    if item is None:
        return web.HttpError(404, "not_found", "asset", "no such dashboard file").response()
    return _serve(item, request)
