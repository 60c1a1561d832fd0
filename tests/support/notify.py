"""Real receivers for notifications: an SMTP server (aiosmtpd) and an HTTP server (aiohttp)
on loopback, each in its own thread with its own event loop, recording what they get; and
an SMTP tarpit (accepts connections and never answers, or answers one byte at a time)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.sink.lock:
            self.sink.messages.append(msg)
            self.sink.envelopes.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
        return "250 OK"


class SmtpSink:
    """An SMTP server on 127.0.0.1:``port``. With ``tls`` (an SSLContext for the server) it
    offers STARTTLS (with ``implicit``: TLS from the start); with ``login`` ((user,
    password)) it requires that login."""

    def __init__(self, port: int | None = None, tls: ssl.SSLContext | None = None,
                 login: tuple[str, str] | None = None, implicit: bool = False) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.implicit = implicit
        self.login = login
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    def _auth(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
              data: Any) -> AuthResult:
        ok = (isinstance(data, LoginPassword) and self.login is not None
              and (data.login.decode(), data.password.decode()) == self.login)
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpSink:
        kw: dict[str, Any] = {}
        if self.tls is not None and self.implicit:
            kw.update(ssl_context=self.tls)
        elif self.tls is not None:
            kw.update(tls_context=self.tls, require_starttls=True)
        if self.login is not None:
            kw.update(authenticator=self._auth, auth_required=True)
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kw)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait(self, n: int, timeout: float = 30) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.messages)} message(s) after {timeout}s, wanted {n}")


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookSink:
    """An HTTP server on 127.0.0.1 answering ``status`` to every request, recording them."""

    status: int = 200
    port: int = field(default_factory=free_port)
    hits: list[Hit] = field(default_factory=list)
    body: str = ""  # what it answers (default: "ok", or "nope" for a failure)

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            self.hits.append(Hit(request.method, request.path_qs, dict(request.headers), body))
        text = self.body or ("ok" if self.status < 400 else "nope")
        return web.Response(status=self.status, text=text)

    def start(self) -> WebhookSink:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def wait(self, n: int, timeout: float = 30) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.hits) >= n:
                    return list(self.hits)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.hits)} request(s) after {timeout}s, wanted {n}")


class SmtpTarpit:
    """A TCP server on 127.0.0.1 that accepts every connection and never says a whole line:
    silent, or (``trickle`` seconds) one byte of a greeting at a time, forever. Counts the
    connections open at once (``most``) and in all (``accepted``)."""

    def __init__(self, trickle: float | None = None) -> None:
        self.trickle = trickle
        self.accepted = 0
        self.open = 0
        self.most = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._threads: list[threading.Thread] = []

    def start(self) -> SmtpTarpit:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.open += 1
                self.most = max(self.most, self.open)
            t = threading.Thread(target=self._hold, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _hold(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        try:
            while not self._stop.is_set():
                if self.trickle is not None:
                    conn.sendall(b"2")
                    self._stop.wait(self.trickle)
                    continue
                try:
                    if conn.recv(1024) == b"":
                        return  # the client hung up
                except TimeoutError:
                    continue
        except OSError:
            return
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def stop(self) -> None:
        self._stop.set()
        self._server.close()
        for t in self._threads:
            t.join(5)
