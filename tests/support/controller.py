"""Start the real controller (``overcast controller``) as a subprocess on free ports with its
own data directory, and talk to it as a user would."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OVERCAST = [sys.executable, "-m", "controller.cli.main"]
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERCAST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "proto")])
    env["OVERCAST_DATA_DIR"] = str(data_dir)
    config = data_dir.parent / "controller.toml"  # empty: the tests set everything by variables
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("# settings come from OVERCAST_* variables in the tests\n")
    env["OVERCAST_CONFIG"] = str(config)
    env["XDG_CONFIG_HOME"] = str(data_dir.parent / "xdg-config")
    # the tests' clouds (moto, fake APIs, libvirt's test driver) live on this host
    env["OVERCAST_ALLOW_LOCAL_CLOUDS"] = "true"
    env.update(extra or {})
    return env


def run_cli(data_dir: Path, *args: str, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OVERCAST, *args], input=input, capture_output=True, text=True,
                          env=env_for(data_dir, env), timeout=timeout, cwd=str(ROOT))


class HttpError(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body
        self.headers = headers


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class Http:
    """A tiny HTTP client that never raises on status codes (tests assert them)."""

    base: str
    token: str | None = None
    bare: bool = False
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str | None = None
    context: ssl.SSLContext | None = None  # for https: trust the controller's CA

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token is not None:
            req.add_header("Authorization", self.token if self.bare else f"Bearer {self.token}")
        if self.cookies:
            req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if self.csrf is not None:
            req.add_header("X-CSRF-Token", self.csrf)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.context) as resp:
                status, hdrs, payload = resp.status, dict(resp.headers), resp.read()
                set_cookies = resp.headers.get_all("Set-Cookie") or []
        except urllib.error.HTTPError as exc:
            status, hdrs, payload = exc.code, dict(exc.headers), exc.read()
            set_cookies = exc.headers.get_all("Set-Cookie") or []
        for c in set_cookies:
            name, _, rest = c.partition("=")
            value = rest.split(";", 1)[0]
            if value in ('""', ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode(errors="replace")
        return Response(status, parsed, hdrs, payload)

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Response:
        return self.request("DELETE", path, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("PATCH", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("PUT", path, body, **kw)


class Controller:
    """One controller process. ``start`` waits until it is ready; ``stop`` sends SIGTERM."""

    def __init__(self, tmp: Path, extra_env: dict[str, str] | None = None,
                 url: str | None = None) -> None:
        self.data_dir = tmp / "data"
        self._url = url  # the external URL when not plain loopback HTTP
        self.tmp = tmp
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.agents_port = free_port()
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = tmp / "controller.log"
        self._started = False  # ports are only ever changed before a first successful start

    @property
    def url(self) -> str:
        return self._url or f"http://127.0.0.1:{self.http_port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https"):
            return None
        return ssl.create_default_context(cafile=str(self.data_dir / "pki" / "ca.crt"))

    @property
    def ca_fingerprint(self) -> str:
        import re

        m = re.search(r"CA fingerprint (sha256:[0-9a-f]{64})", self.log_path.read_text())
        assert m, "the controller prints its CA fingerprint when ready"
        return m.group(1)

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def env(self) -> dict[str, str]:
        return env_for(self.data_dir, {
            "OVERCAST_HTTP": f"127.0.0.1:{self.http_port}",
            "OVERCAST_GRPC": f"127.0.0.1:{self.grpc_port}",
            "OVERCAST_AGENTS": f"127.0.0.1:{self.agents_port}",
            "OVERCAST_LOGIN_MAX_FAILURES": "5",
            **self.extra_env,
        })

    def cli(self, *args: str, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        e = self.env()
        e.update(env or {})
        return subprocess.run([*OVERCAST, *args], input=input, capture_output=True, text=True,
                              env=e, timeout=timeout, cwd=str(ROOT))

    def start(self, timeout: float = 30) -> Controller:
        for attempt in range(3):
            self.log = open(self.log_path, "a")  # noqa: SIM115
            offset = self.log_path.stat().st_size  # a restart appends: look only at the new part
            self.proc = subprocess.Popen([*OVERCAST, "controller"], env=self.env(), cwd=str(ROOT),
                                         stdout=self.log, stderr=subprocess.STDOUT, text=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.log.close()
                    new = self.log_path.read_text()[offset:]
                    # free_port() only finds a port free for a moment: something else may take
                    # it (an outgoing connection's source port) before the controller binds it
                    if attempt < 2 and not self._started and self._repick(new):
                        break
                    raise RuntimeError(f"controller exited {self.proc.returncode}:\n"
                                       f"{self.log_path.read_text()}")
                if "overcast controller ready" in self.log_path.read_text()[offset:]:
                    self._started = True
                    return self
                time.sleep(0.05)
            else:
                raise RuntimeError(f"controller not ready in {timeout}s:\n{self.log_path.read_text()}")
        raise AssertionError("unreachable")

    def _repick(self, log: str) -> bool:
        """New ports for those of ours the controller could not bind (not ones a test set)."""
        if "address already in use" not in log:
            return False
        changed = False
        for attr, var in (("http_port", "OVERCAST_HTTP"), ("grpc_port", "OVERCAST_GRPC"),
                          ("agents_port", "OVERCAST_AGENTS")):
            if var not in self.extra_env and f":{getattr(self, attr)}" in log and self._url is None:
                setattr(self, attr, free_port())
                changed = True
        return changed

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def http(self, token: str | None = None, bare: bool = False) -> Http:
        return Http(self.url, token, bare, context=self.ssl_context())

    def adduser(self, email: str, password: str, *extra: str) -> dict[str, Any]:
        r = self.cli("adduser", email, "--password-stdin", "--json", *extra, input=password + "\n")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def session(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> Http:
        """A client signed in with a session cookie and the CSRF header set."""
        h = self.http()
        r = h.post("/api/v2/auth/sessions", {"email": email, "password": password})
        assert r.status == 200, r.body
        h.csrf = r.body["data"]["csrf_token"]
        return h

    def token(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD, name: str = "test",
              ttl: int | None = None) -> str:
        h = self.session(email, password)
        body: dict[str, Any] = {"name": name}
        if ttl is not None:
            body["ttl"] = ttl
        r = h.post("/api/v2/auth/tokens", body)
        assert r.status == 201, r.body
        return str(r.body["token"])
