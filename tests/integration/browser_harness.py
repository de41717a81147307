"""Headless Chromium for the e2e tier (tests/e2e) and a loopback proxy recording what a page got."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_HINT = (
    "the dashboard e2e test needs headless Chromium and found none "
    f"({', '.join(CHROMIUM_NAMES)}, /usr/bin/chromium). Install it: apt-get install -y "
    "chromium (Debian/Ubuntu), or set KESTREL_CHROMIUM=/path/to/chrome"
)
# Headless, no sandbox (CI runs as root), nothing fetched but what the page asks for, and
# no name resolves but loopback: a page that tried to reach a CDN would fail to.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-dev-shm-usage", "--disable-extensions", "--disable-sync", "--no-first-run",
    "--no-default-browser-check", "--no-proxy-server", "--hide-scrollbars",
    "--force-device-scale-factor=1", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)  # fmt: skip
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                       "source", "track", "wbr"})  # fmt: skip


def find_chromium() -> str | None:
    """KESTREL_CHROMIUM, else the first Chromium or Chrome on PATH, else None."""
    configured = os.environ.get("KESTREL_CHROMIUM", "")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def run_chromium(binary: str, profile: Path, url: str, *args: str, timeout_s: float = 90) -> str:
    """Run headless Chromium once on `url` with `args`; its stdout (stderr on failure)."""
    profile.mkdir(parents=True, exist_ok=True)
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


@dataclass
class Element:
    """One element of a dumped DOM: its tag, attributes and text (its descendants' too)."""

    tag: str
    attrs: dict[str, str]
    text: str = ""


class Dom(HTMLParser):
    """The elements of an HTML document that have an id, and how many of each tag there are."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, Element] = {}
        self.tags: dict[str, int] = {}
        self.body: dict[str, str] = {}
        self._open: list[tuple[str, Element | None]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {k: v or "" for k, v in attrs}
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "body":
            self.body = named
        element = Element(tag, named) if "id" in named else None
        if element is not None:
            self.by_id[named["id"]] = element
        if tag not in VOID_TAGS:
            self._open.append((tag, element))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, element in self._open:
            if element is not None:
                element.text += data

    def __getitem__(self, element_id: str) -> Element:
        return self.by_id[element_id]


@dataclass(frozen=True)
class Exchange:
    """One request the proxy passed on: path, the x-api-key it carried, the answer."""

    method: str
    path: str
    api_key: str | None
    status: int
    body: bytes


@dataclass
class RecordingProxy:
    """A loopback HTTP proxy in front of `target` (host, port) that records every exchange."""

    target: tuple[str, int]
    exchanges: list[Exchange] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """Base URL of the proxy, e.g. http://127.0.0.1:PORT."""
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> RecordingProxy:
        """Listen on a free loopback port and serve in a daemon thread."""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream = http.client.HTTPConnection(*proxy.target, timeout=30)
                try:
                    upstream.request(self.command, self.path, headers=headers)
                    reply = upstream.getresponse()
                    body = reply.read()
                    out = [(k, v) for k, v in reply.getheaders() if k.lower() not in HOP_BY_HOP]
                finally:
                    upstream.close()
                with proxy._lock:
                    proxy.exchanges.append(
                        Exchange(self.command, self.path, self.headers.get("x-api-key"),
                                 reply.status, body)
                    )  # fmt: skip
                self.send_response(reply.status)
                for name, value in out:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="proxy", daemon=True).start()
        return self

    def recorded(self) -> list[Exchange]:
        """A copy of the exchanges so far."""
        with self._lock:
            return list(self.exchanges)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
