"""A tiny JSON HTTP server on loopback that answers like a provider's documented API and
records every request, so an adapter can be driven against it as against the cloud.

    with FakeJsonApi() as api:
        api.route("GET", r"/v4/linode/instances", {"data": [...], "page": 1, "pages": 1})
        redirect(driver.connection, api)      # the libcloud driver now talks to the fake
        ...
        assert api.requests[0].path == "/v4/linode/instances"

Routes are matched newest first (method and a regular expression on the path, without
the query); a request no route matches gets ``default_status`` with ``default_body``.
Bodies are sent as JSON, except ``bytes``, sent as they are (give their Content-Type). A
body may be a function of the recorded request, for APIs that answer by a query parameter
(``?Action=...``) or whose answers depend on earlier calls; it returns the body, or a
``(status, body)`` pair."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any                      # parsed JSON when it parses, else the text ("" when empty)

    def param(self, name: str) -> str:
        """The first value of a query parameter ("" when absent)."""
        return self.query.get(name, [""])[0]


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class FakeJsonApi:
    """Blocking server in a daemon thread; ``close()`` (or the ``with`` block) stops it."""

    def __init__(self, default_status: int = 404,
                 default_body: Any = None) -> None:
        self.routes: list[_Route] = []
        self.requests: list[Recorded] = []
        self.default_status = default_status
        self.default_body = default_body if default_body is not None else {"error": "not found"}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # libcloud keeps connections alive: do not wait for its idle ones when closing
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.02}, daemon=True)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def route(self, method: str, path: str, body: Any | Callable[[Recorded], Any] = None,
              status: int = 200, headers: dict[str, str] | None = None) -> None:
        """Answer ``method`` on paths fully matching the regular expression ``path``."""
        self.routes.insert(0, _Route(method.upper(), re.compile(path), status, body,
                                     headers or {}))

    def only(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method.upper()]

    def start(self) -> FakeJsonApi:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeJsonApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _answer(self, method: str, raw_path: str, headers: dict[str, str],
                raw_body: bytes) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(raw_path)
        text = raw_body.decode("utf-8", "replace")
        try:
            body: Any = json.loads(text) if text else ""
        except ValueError:
            body = text
        with self._lock:
            recorded = Recorded(method, parts.path, parse_qs(parts.query, keep_blank_values=True),
                                headers, body)
            self.requests.append(recorded)
            # newest route first, so a test can override a default set up earlier
            for r in self.routes:
                if r.method == method and r.pattern.fullmatch(parts.path):
                    if not callable(r.body):
                        return r.status, r.body, r.headers
                    answer = r.body(recorded)
                    if isinstance(answer, tuple):
                        return int(answer[0]), answer[1], r.headers
                    return r.status, answer, r.headers
        return self.default_status, self.default_body, {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, extra = api._answer(self.command, self.path, dict(self.headers), raw)
                if body is None or status == 204:
                    data = b""
                elif isinstance(body, bytes):  # a body given as bytes goes out as it is
                    data = body
                else:
                    data = json.dumps(body).encode()
                self.send_response(status)
                if "Content-Type" not in extra:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler


def redirect(connection: Any, api: FakeJsonApi) -> None:
    """Point a libcloud ``Connection`` at ``api`` over plain HTTP on loopback, keeping its
    paths, headers and authentication: the driver's requests are exactly what it would send."""
    connection.host = api.host
    connection.port = api.port
    connection.secure = 0
    connection.connect(host=api.host, port=api.port)
