"""A small blocking client of the Docker Engine API (also served by Podman), and the one place
its failures become the domain's errors.

Why not libcloud's ``DockerContainerDriver`` (libcloud 3.9): it cannot use a unix socket; it
"strips" ``http://``/``https://`` with ``str.strip`` (so ``https://localhost`` becomes
``localhos``); it has no CA option for TLS (libcloud's is process-wide); ``deploy_container``
sends ``Cmd: ["None"]`` when no command is given; it folds ``paused`` into running by parsing
the human ``Status`` text; and ``destroy_container`` cannot remove a running container. The
calls needed here are few and documented, so this speaks the API (pinned to v1.41, or the
daemon's own version when older, down to v1.24) with ``http.client``.

Blocking: one connection per request (thread-safe, no pool to close)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from controller.clouds.providers.errors import clean
from controller.errors import (
    Conflict,
    CredentialsRefused,
    Invalid,
    NotFound,
    OvercastError,
    ProviderError,
    ProviderUnavailable,
)

log = logging.getLogger(__name__)

PROVIDER = "docker"
API_VERSION = (1, 41)
MIN_API_VERSION = (1, 24)
_MAX_BODY = 32 * 1024 * 1024
# TLS alerts by which a daemon (``--tlsverify``) refuses the client certificate: none given,
# or one its CA did not sign (DECRYPT_ERROR: a CA of the same name did not sign it)
_CLIENT_CERT_REFUSED = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                        "CERTIFICATE_UNKNOWN", "ACCESS_DENIED", "DECRYPT_ERROR")


@dataclass(frozen=True)
class Endpoint:
    """Where the daemon listens: a unix socket, or host and port (TLS or plain HTTP)."""

    socket: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False

    @property
    def label(self) -> str:
        return f"unix://{self.socket}" if self.socket else f"{self.host}:{self.port}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _version(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


class EngineClient:
    """Requests to one daemon. ``context`` is the TLS context (None for plain HTTP or a
    socket); ``auth`` an ``Authorization`` header value (basic auth behind a proxy);
    ``credential`` the field a 401/403 is about (``password`` with basic auth, else
    ``tlsCert``); ``tls12`` makes a TLS context like ``context`` but of TLS 1.2 at most, to
    learn why a daemon dropped the connection (see :meth:`_dropped`)."""

    def __init__(self, endpoint: Endpoint, timeout: float, context: ssl.SSLContext | None = None,
                 auth: str = "", credential: str = "",
                 tls12: Callable[[], ssl.SSLContext] | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._context = context
        self._auth = auth
        self._credential = credential
        self._tls12 = tls12
        self._prefix = ""

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        e = self.endpoint
        if e.socket:
            return _UnixConnection(e.socket, timeout)
        if e.tls:
            return http.client.HTTPSConnection(e.host, e.port, timeout=timeout,
                                               context=self._context)
        return http.client.HTTPConnection(e.host, e.port, timeout=timeout)

    def api_version(self) -> str:
        """Agree on the API version once (``GET /version``)."""
        if not self._prefix:
            info = self.call("GET", "/version", versioned=False, what="asking the version")
            server = _version(str(info.get("ApiVersion", ""))) if isinstance(info, dict) else (0, 0)
            if server < MIN_API_VERSION:
                raise ProviderError(f"the Docker API at {self.endpoint.label} is too old "
                                    f"(it needs 1.24 or later)", {"provider": PROVIDER})
            use = min(server, API_VERSION)
            self._prefix = f"/v{use[0]}.{use[1]}"
        return self._prefix

    def call(self, method: str, path: str, query: dict[str, Any] | None = None,
             body: Any = None, *, what: str, versioned: bool = True, wait: float = 0.0,
             ok_not_modified: bool = False) -> Any:
        """One request; the parsed JSON answer (None for an empty one). ``wait`` adds seconds
        to the timeout for calls the daemon itself takes time over (stop, restart).
        ``ok_not_modified`` treats 304 (already started/stopped) as success."""
        url = (self.api_version() if versioned else "") + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        if self.endpoint.socket:
            headers["Host"] = "docker"  # what docker's own client sends over a socket
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._auth:
            headers["Authorization"] = self._auth
        with engine_errors(what, self.endpoint.label):
            conn = self._connection(self.timeout + wait)
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read(_MAX_BODY)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                    BrokenPipeError):
                self._dropped(what)
                raise
            finally:
                conn.close()
            if resp.status == 304 and ok_not_modified:
                return None
            if resp.status >= 300:
                raise _by_status(resp.status, _message(raw), what, self.endpoint.label,
                                 self._credential)
            if not raw:
                return None
            try:
                return json.loads(raw)
            except ValueError:
                raise ProviderError(f"docker answered something unreadable while {what}",
                                    {"provider": PROVIDER}) from None


    def _dropped(self, what: str) -> None:
        """The daemon dropped a TLS connection: with TLS 1.3 that is how it refuses a client
        certificate (it checks it after the handshake, then closes). Handshake once more with
        TLS 1.2 at most, where the refusal is an alert during the handshake, and raise
        :class:`CredentialsRefused` when it is one; return otherwise."""
        if not self.endpoint.tls or self._tls12 is None:
            return
        try:
            context = self._tls12()
            with socket.create_connection((self.endpoint.host, self.endpoint.port),
                                          self.timeout) as raw:
                with context.wrap_socket(raw, server_hostname=self.endpoint.host):
                    return
        except ssl.SSLError as exc:
            reason = str(exc.reason or "")
        except (OSError, ValueError):
            return
        # the first handshake succeeded with these settings: a HANDSHAKE_FAILURE now is the
        # TLS 1.2 server's answer to a missing client certificate, not a cipher mismatch
        if any(alert in reason for alert in (*_CLIENT_CERT_REFUSED, "HANDSHAKE_FAILURE")):
            raise _client_cert_refused(self.endpoint.label, f" while {what}", reason)


def _client_cert_refused(where: str, doing: str, reason: str) -> CredentialsRefused:
    return CredentialsRefused(f"docker at {where} refused the client certificate (tlsCert)"
                              f"{doing}: none was given, or its CA did not sign it "
                              f"({clean(reason)})", "tlsCert", provider=PROVIDER)


def quote_id(value: str) -> str:
    """A container id or name as one path segment (never a path of its own)."""
    return quote(value, safe="")


def _message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return clean(raw.decode("utf-8", "replace"))
    if isinstance(body, dict):
        return clean(body.get("message") or body.get("cause") or body)
    return clean(body)


def _by_status(status: int, message: str, what: str, where: str,
               credential: str = "") -> OvercastError:
    doing = f" while {what}" if what else ""
    details: dict[str, Any] = {"provider": PROVIDER, "status": status}
    if status in (401, 403):
        which = f" ({credential})" if credential else ""
        return CredentialsRefused(f"docker at {where} refused the credentials{which}{doing}: "
                                  f"{message}", credential or None, **details)
    if status == 404:
        return NotFound(f"docker has no such resource{doing}: {message}", details)
    if status == 409 or (status == 500 and "already in use" in message):  # podman says 500
        return Conflict(f"docker refused{doing}: {message}", details)
    if status in (400, 422):
        return Invalid(f"docker refused the request{doing}: {message}", **details)
    if status in (429, 502, 503, 504):
        return ProviderUnavailable(f"docker is unavailable{doing}: {message}", details)
    return ProviderError(f"docker failed{doing}: {message}", details)


@contextmanager
def engine_errors(what: str, where: str) -> Iterator[None]:
    """Network and TLS failures of a request, in words (HTTP statuses are mapped above)."""
    doing = f" while {what}" if what else ""
    details = {"provider": PROVIDER}
    try:
        yield
    except OvercastError:
        raise
    except TimeoutError:
        raise ProviderUnavailable(f"docker at {where} did not answer in time{doing}",
                                  details) from None
    except ssl.SSLCertVerificationError as exc:
        raise CredentialsRefused(
            f"TLS with docker at {where} failed{doing}: its certificate is not one tlsCaCert "
            f"verifies ({clean(exc.verify_message or exc.reason or exc)})", "tlsCaCert",
            **details) from None
    except ssl.SSLError as exc:
        reason = str(exc.reason or "")
        if any(alert in reason for alert in _CLIENT_CERT_REFUSED):
            raise _client_cert_refused(where, doing, reason) from None
        raise ProviderUnavailable(f"TLS with docker at {where} failed{doing}: "
                                  f"{clean(exc.reason or exc)}", details) from None
    except OSError as exc:
        raise ProviderUnavailable(f"cannot reach docker at {where}{doing}: "
                                  f"{clean(exc.strerror or exc)}", details) from None
    except http.client.HTTPException as exc:
        raise ProviderUnavailable(f"docker at {where} broke off the answer{doing}: "
                                  f"{type(exc).__name__}", details) from None
