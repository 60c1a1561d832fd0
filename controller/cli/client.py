"""The CLI's HTTP client (standard library only) and its stored login."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

# exit codes, documented in the README
OK, FAILED, USAGE, AUTH, NOT_FOUND, UNREACHABLE = 0, 1, 2, 3, 4, 5


class CliError(Exception):
    def __init__(self, message: str, code: int = FAILED, status: int = 0,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details or {}


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "overcast"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclass
class Login:
    url: str
    token: str = ""
    token_id: str = ""
    email: str = ""
    ca_file: str = ""

    @classmethod
    def load(cls) -> Login:
        env_url = os.environ.get("OVERCAST_URL")
        env_token = os.environ.get("OVERCAST_TOKEN")
        path = config_dir() / "cli.json"
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                raise CliError(f"{path} is damaged; run 'overcast login' again") from None
        if env_url:
            data["url"] = env_url
        if env_token:
            data["token"] = env_token
        if not data.get("url") or not data.get("token"):
            raise CliError("not logged in: run 'overcast login URL' (or set OVERCAST_URL and "
                           "OVERCAST_TOKEN)", AUTH)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def save(self) -> Path:
        path = config_dir() / "cli.json"
        _write_private(path, json.dumps(self.__dict__, indent=2).encode())
        return path


def fetch_ca(url: str, fingerprint: str) -> Path:
    """Download the controller's CA without trusting it, keep it only if its SHA-256 matches."""
    want = fingerprint.lower().removeprefix("sha256:").replace(":", "")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # verified below by fingerprint, before any secret is sent
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/ca.pem", timeout=15, context=ctx) as r:  # noqa: S310
            pem = r.read()
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}", UNREACHABLE) from None
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except ValueError:  # UnicodeDecodeError too: not a PEM certificate at all
        raise CliError(f"{url.rstrip('/')}/ca.pem did not answer with a PEM certificate: is "
                       "this an Overcast controller?", UNREACHABLE) from None
    got = hashlib.sha256(der).hexdigest()
    if got != want:
        raise CliError(f"the controller's CA fingerprint is sha256:{got}, not the one given: "
                       "refusing to trust it", AUTH)
    host = urllib.parse.urlsplit(url).netloc.replace(":", "_")
    path = config_dir() / f"ca-{host}.pem"
    _write_private(path, pem)
    return path


class Client:
    def __init__(self, url: str, token: str = "", ca_file: str = "") -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.cookies: dict[str, str] = {}
        self.csrf = ""
        try:
            self._ctx = ssl.create_default_context(cafile=ca_file or None) if self.url.startswith("https") else None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise CliError(f"cannot use the CA file {ca_file}: {getattr(exc, 'strerror', None) or exc}; "
                           "log in again with --ca-fingerprint", FAILED) from None

    def request(self, method: str, path: str, body: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        url = self.url + path
        if params:
            q = {k: v for k, v in params.items() if v not in (None, "")}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        elif self.cookies:
            req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
            if self.csrf:
                req.add_header("X-CSRF-Token", self.csrf)
        try:
            with urllib.request.urlopen(req, timeout=60, context=self._ctx) as resp:  # noqa: S310
                raw = resp.read()
                for header in resp.headers.get_all("Set-Cookie") or []:
                    c: SimpleCookie = SimpleCookie()
                    c.load(header)
                    for k, morsel in c.items():
                        self.cookies[k] = morsel.value
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except ssl.SSLCertVerificationError as exc:
            raise CliError(f"TLS: cannot verify {self.url} ({exc.verify_message}); log in with "
                           "--ca-fingerprint (printed by the controller at start)", AUTH) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise CliError(f"TLS: cannot verify {self.url} ({reason.verify_message}); log in "
                               "with --ca-fingerprint (printed by the controller at start)", AUTH) from None
            raise CliError(f"cannot reach the controller at {self.url}: {reason}", UNREACHABLE) from None
        except http.client.InvalidURL as exc:
            raise CliError(f"the controller URL {self.url} is not valid: {exc}", FAILED) from None
        except http.client.HTTPException as exc:  # something that does not speak HTTP
            raise CliError(f"{self.url} did not answer like an Overcast controller "
                           f"({exc.__class__.__name__}); check the URL", UNREACHABLE) from None
        if not raw:
            return None
        try:
            answer = json.loads(raw)
        except ValueError:  # a proxy's error page, another service on that port, ...
            answer = None
        if not isinstance(answer, dict):
            raise CliError(f"{self.url} did not answer like an Overcast controller (not a JSON "
                           f"object, for {method} {path}); check the URL", UNREACHABLE)
        return answer


def _http_error(exc: urllib.error.HTTPError) -> CliError:
    try:
        err = json.loads(exc.read()).get("error", {})
    except (ValueError, AttributeError):
        err = {}
    message = err.get("message") or f"HTTP {exc.code}"
    details = err.get("details") or {}
    if details.get("field"):
        message += f" (field: {details['field']})"
    code = {401: AUTH, 403: AUTH, 404: NOT_FOUND}.get(exc.code, UNREACHABLE if exc.code >= 500 else FAILED)
    if str(err.get("code", "")).startswith("provider_"):
        code = FAILED  # the controller answered: a cloud refused or did not answer it
    elif err.get("code") == "forbidden" and exc.code == 403 and "allow_local_clouds" in message:
        code = FAILED
    return CliError(message, code, exc.code, details)


def warn(message: str) -> None:
    print(message, file=sys.stderr)
