"""Stopping and starting the controller: what survives a clean stop and a ``kill -9`` in the
middle of writes, one controller per data directory, the external URL check at start, and a
clean SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from overcast.api.v1 import management_pb2 as pb
from overcast.api.v1 import management_pb2_grpc as pb_grpc
from tests.support.controller import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    OVERCAST,
    ROOT,
    Controller,
    Http,
    free_port,
)


def start_again(c: Controller) -> None:
    """Start a stopped controller. ``Controller.start`` waits for the ready line in its log,
    which a previous run already wrote: move the old log aside so it waits for this run."""
    n = len(list(c.tmp.glob("controller.log.*")))
    c.log_path.rename(c.log_path.with_name(f"controller.log.{n}"))
    c.start()


def run_controller(c: Controller, extra: dict[str, str] | None = None,
                   timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``overcast controller`` that is expected to refuse to start: its exit and output."""
    env = c.env()
    env.update(extra or {})
    return subprocess.run([*OVERCAST, "controller"], env=env, cwd=str(ROOT), capture_output=True,
                          text=True, timeout=timeout)


def verify_ok(c: Controller) -> dict[str, Any]:
    r = c.cli("audit", "verify", "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    out: dict[str, Any] = json.loads(r.stdout)
    assert out["ok"] is True
    return out


def whoami(c: Controller, h: Http) -> int:
    return h.get("/api/v2/auth").status


# ---- clean restart ------------------------------------------------------------------------

def test_clean_restart_keeps_data_sessions_and_tokens(fresh_controller: Controller) -> None:
    c = fresh_controller
    h = c.session()
    r = h.post("/api/v2/auth/tokens", {"name": "survivor"})
    assert r.status == 201
    token, tid = r.body["token"], r.body["id"]
    r = h.post("/api/v2/auth/tokens", {"name": "revoked before restart"})
    revoked = r.body["token"]
    assert h.delete(f"/api/v2/auth/tokens/{r.body['id']}").status == 200
    c.adduser("henry@example.com", "henry password 1", "--org", "Acme")
    entries = verify_ok(c)["entries"]
    instance = c.http().get("/api/v2/health").body["instance"]

    assert c.stop() == 0
    start_again(c)

    assert c.http().get("/api/v2/health").body["instance"] != instance  # really a new process
    # the session cookie still signs in, and its CSRF token still allows changes
    assert whoami(c, h) == 200
    r = h.post("/api/v2/auth/tokens", {"name": "after restart"})
    assert r.status == 201, r.body
    # the token still works, the revoked one still does not
    t = c.http(token)
    info = t.get("/api/v2/auth").body["data"]
    assert info["user"]["email"] == ADMIN_EMAIL and info["auth"] == "token"
    assert c.http(revoked).get("/api/v2/auth").status == 401
    listed = {x["id"]: x for x in t.get("/api/v2/auth/tokens").body["data"]}
    assert listed[tid]["name"] == "survivor" and not listed[tid]["revoked"]
    # the user made before the stop logs in; the audit log goes on from where it was
    assert c.session("henry@example.com", "henry password 1").get("/api/v2/auth").status == 200
    out = verify_ok(c)
    assert out["entries"] > entries
    seqs = [e["seq"] for e in t.get("/api/v2/logs?limit=1000").body["data"]]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)


# ---- kill -9 during writes ----------------------------------------------------------------

class Writers:
    """Threads creating tokens and signing in as fast as they can; they keep what the
    controller acknowledged, and stop at the first failure (the controller went away)."""

    def __init__(self, c: Controller) -> None:
        self.c = c
        self.tokens: list[tuple[str, str, str]] = []  # (id, name, secret)
        self.sessions: list[Http] = []
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._tokens, args=(i,), daemon=True)
                        for i in range(2)]
        self.threads.append(threading.Thread(target=self._logins, daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _tokens(self, n: int) -> None:
        h = self.c.session()
        i = 0
        while not self.stop.is_set():
            name = f"w{n}-{i}"
            try:
                r = h.post("/api/v2/auth/tokens", {"name": name})
            except OSError:
                return
            if r.status != 201:
                self.errors.append(f"{r.status} {r.body}")
                return
            self.tokens.append((r.body["id"], name, r.body["token"]))
            i += 1

    def _logins(self) -> None:
        while not self.stop.is_set():
            h = Http(self.c.url)
            try:
                r = h.post("/api/v2/auth/sessions", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
            except OSError:
                return
            if r.status != 200:
                self.errors.append(f"{r.status} {r.body}")
                return
            self.sessions.append(h)


def test_kill9_during_writes_loses_nothing_acknowledged(fresh_controller: Controller) -> None:
    c = fresh_controller
    w = Writers(c)
    w.start()
    deadline = time.monotonic() + 20
    while (len(w.tokens) < 40 or len(w.sessions) < 3) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not w.errors, w.errors
    c.kill9()
    w.join()
    assert c.proc is not None and c.proc.returncode == -signal.SIGKILL
    assert len(w.tokens) >= 40 and len(w.sessions) >= 3, (len(w.tokens), len(w.sessions))
    acked_tokens = list(w.tokens)
    acked_sessions = list(w.sessions)

    # nothing answers on the admin socket left behind: adduser opens the store itself
    assert (c.data_dir / "admin.sock").exists()
    c.adduser("ivy@example.com", "ivy password 1", "--org", "Acme")
    verify_ok(c)  # offline, before the controller runs again

    start_again(c)
    h = c.session()
    listed = {t["id"]: t for t in h.get("/api/v2/auth/tokens?limit=1000").body["data"]}
    missing = [name for tid, name, _ in acked_tokens if tid not in listed]
    assert not missing, f"acknowledged but lost: {missing}"
    for tid, name, _ in acked_tokens:
        assert listed[tid]["name"] == name
    # every acknowledged token authenticates (sample the first, last and some between)
    for _, _, secret in acked_tokens[:: max(1, len(acked_tokens) // 10)] + acked_tokens[-1:]:
        assert c.http(secret).get("/api/v2/auth").status == 200
    for s in acked_sessions:
        assert whoami(c, s) == 200
    # each acknowledged change has its audit entry, and the chain holds
    logged = {e["target"]["id"] for e in
              h.get("/api/v2/logs?action=token.create&limit=1000").body["data"]}
    assert {tid for tid, _, _ in acked_tokens} <= logged
    assert c.session("ivy@example.com", "ivy password 1").get("/api/v2/auth").status == 200
    assert verify_ok(c)["entries"] >= len(acked_tokens) + len(acked_sessions)
    # and the controller goes on writing after the crash
    assert h.post("/api/v2/auth/tokens", {"name": "after the crash"}).status == 201
    verify_ok(c)


# ---- one controller per data directory ----------------------------------------------------

def test_second_controller_on_same_data_dir_fails_fast(fresh_controller: Controller) -> None:
    c = fresh_controller
    other = Controller(c.tmp)  # same data directory, other ports
    assert other.data_dir == c.data_dir
    t = time.monotonic()
    r = run_controller(other)
    assert time.monotonic() - t < 10
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "another controller is running" in out, out
    assert str(c.data_dir) in out
    assert "Traceback" not in out
    # the running one is untouched: its admin socket still answers, its ports still serve
    assert (c.data_dir / "admin.sock").exists()
    c.adduser("jack@example.com", "jack password 1")
    assert c.session("jack@example.com", "jack password 1").get("/api/v2/auth").status == 200
    assert c.stop() == 0


def test_ports_in_use_fail_with_a_clear_message(fresh_controller: Controller,
                                                tmp_path_factory: Any) -> None:
    c = fresh_controller
    for which, label in (("http", "HTTP"), ("grpc", "gRPC")):
        other = Controller(tmp_path_factory.mktemp(f"clash-{which}"))  # its own data directory
        port = getattr(c, f"{which}_port")
        setattr(other, f"{which}_port", port)
        r = run_controller(other)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert f"cannot listen for {label} on 127.0.0.1:{port}" in out, out
        assert "Traceback" not in out, out
        assert not (other.data_dir / "admin.sock").exists()
    assert c.http().get("/api/v2/health").status == 200


# ---- the external URL check ---------------------------------------------------------------

def _refused_start(c: Controller, extra: dict[str, str]) -> str:
    r = run_controller(c, extra)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "overcast controller ready" not in out
    assert "external_url" in out, out
    assert "Traceback" not in out, out
    return out


def test_invalid_external_url_refuses_to_start(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    out = _refused_start(c, {"OVERCAST_EXTERNAL_URL": "http://example.invalid:1"})
    assert "example.invalid" in out
    # behind a proxy the address itself is allowed, but nothing answers there
    out = _refused_start(c, {"OVERCAST_EXTERNAL_URL": "http://example.invalid:1",
                             "OVERCAST_BEHIND_PROXY": "true"})
    assert "did not answer" in out and "example.invalid" in out
    dead = f"http://127.0.0.1:{free_port()}"
    out = _refused_start(c, {"OVERCAST_EXTERNAL_URL": dead, "OVERCAST_BEHIND_PROXY": "true"})
    assert "did not answer" in out and dead in out
    # a refused start leaves nothing behind: no admin socket, no lock, ports free
    assert not (c.data_dir / "admin.sock").exists()
    c.start()
    assert c.http().get("/api/v2/health").status == 200
    assert c.stop() == 0


def test_external_url_answered_by_another_controller_refuses_to_start(
        fresh_controller: Controller, tmp_path_factory: Any) -> None:
    c = Controller(tmp_path_factory.mktemp("second"))
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    out = _refused_start(c, {"OVERCAST_EXTERNAL_URL": fresh_controller.url,
                             "OVERCAST_BEHIND_PROXY": "true"})
    assert "another server" in out


# ---- start-up problems are one line, never a traceback -------------------------------------

def _cannot_start(c: Controller, extra: dict[str, str]) -> str:
    r = run_controller(c, extra)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "overcast: cannot start: " in out, out
    assert "Traceback" not in out and "overcast controller ready" not in out, out
    return out


def test_unusable_data_dir_refuses_to_start(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    out = _cannot_start(c, {"OVERCAST_DATA_DIR": str(a_file)})
    assert f"data directory {a_file} is not a directory" in out and "data_dir" in out
    out = _cannot_start(c, {"OVERCAST_DATA_DIR": str(a_file / "data")})
    assert f"data directory {a_file / 'data'}" in out and "Not a directory" in out
    # a store that is not a store
    c.data_dir.mkdir(mode=0o700)
    (c.data_dir / "store").write_text("")
    out = _cannot_start(c, {})
    assert "store" in out


def test_data_dir_without_permission_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Run in this process, so that root (whom permissions do not stop) sees it too."""
    from controller.cli import main as cli_main

    data = tmp_path / "data"
    config = tmp_path / "controller.toml"
    config.write_text("")
    real_chmod = os.chmod

    def chmod(path: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        if str(path) == str(data):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr("controller.log.setup", lambda *a, **k: None)
    for k in [k for k in os.environ if k.startswith("OVERCAST_")]:
        monkeypatch.delenv(k)
    code = cli_main.main(["controller", "--config", str(config), "--data-dir", str(data),
                          "--http", f"127.0.0.1:{free_port()}", "--grpc", f"127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.strip() == (f"overcast: cannot start: data directory {data}: Operation not "
                           "permitted (setting: data_dir)")


def test_malformed_tls_cert_refuses_to_start(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    key.write_text("not a key\n")
    for tls in ("on", "auto"):
        out = _cannot_start(c, {"OVERCAST_TLS": tls, "OVERCAST_TLS_CERT": str(cert),
                                "OVERCAST_TLS_KEY": str(key)})
        assert f"tls_cert {cert} and tls_key {key} are not a usable PEM certificate" in out, out
        assert "(setting: tls_cert)" in out
    assert not (c.data_dir / "admin.sock").exists()
    c.start()  # nothing was left locked
    assert c.stop() == 0


# ---- gRPC never carries tokens in clear off loopback --------------------------------------

def test_grpc_off_loopback_serves_tls_even_when_http_is_on_loopback(tmp_path: Path) -> None:
    c = Controller(tmp_path, {"OVERCAST_GRPC": f"0.0.0.0:{free_port()}"})
    c.grpc_port = int(c.extra_env["OVERCAST_GRPC"].rsplit(":", 1)[1])
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    c.start()
    try:
        assert c.url.startswith("http://")  # HTTP is plain on loopback
        token = c.token(name="grpc tls")
        meta = [("authorization", f"Bearer {token}")]
        with grpc.insecure_channel(c.grpc_addr) as ch, pytest.raises(grpc.RpcError):
            pb_grpc.ManagementStub(ch).Whoami(pb.WhoamiRequest(), timeout=5, metadata=meta)
        ca = (c.data_dir / "pki" / "ca.crt").read_bytes()
        with grpc.secure_channel(c.grpc_addr, grpc.ssl_channel_credentials(ca)) as ch:
            me = pb_grpc.ManagementStub(ch).Whoami(pb.WhoamiRequest(), timeout=10, metadata=meta)
        assert me.user.email == ADMIN_EMAIL
    finally:
        assert c.stop() == 0
    assert "(TLS)" in c.log_path.read_text()


def test_grpc_off_loopback_with_tls_off_refuses_to_start(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    out = _cannot_start(c, {"OVERCAST_TLS": "off", "OVERCAST_GRPC": f"0.0.0.0:{free_port()}"})
    assert "gRPC would carry tokens in clear: bind it to loopback or turn tls on" in out
    assert "(setting: grpc)" in out


# ---- SIGTERM ------------------------------------------------------------------------------

async def test_sigterm_exits_0_promptly_and_removes_admin_socket(fresh_controller: Controller) -> None:
    c = fresh_controller
    sock = c.data_dir / "admin.sock"
    assert sock.exists()
    token = await asyncio.to_thread(c.token, name="sigterm")
    async with aiohttp.ClientSession() as s, grpc.aio.insecure_channel(c.grpc_addr) as ch:
        # live clients must not hold up the stop: a WebSocket still open, one already closed,
        # and a gRPC event stream
        ws = await s.ws_connect(c.url.replace("http://", "ws://") + "/api/v2/events",
                                headers={"Authorization": f"Bearer {token}"})
        assert (await ws.receive_json())["type"] == "ready"
        gone = await s.ws_connect(c.url.replace("http://", "ws://") + "/api/v2/events",
                                  headers={"Authorization": f"Bearer {token}"})
        assert (await gone.receive_json())["type"] == "ready"
        await gone.close()
        stream = pb_grpc.ManagementStub(ch).WatchEvents(
            pb.WatchEventsRequest(), metadata=[("authorization", f"Bearer {token}")])
        assert (await stream.read()).type == "ready"

        t = time.monotonic()
        code = await asyncio.to_thread(c.stop, signal.SIGTERM, 20)
        took = time.monotonic() - t
        assert code == 0
        assert took < 1.5, f"SIGTERM took {took:.1f} s"  # no waiting out a grace period
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        if msg.type == aiohttp.WSMsgType.CLOSE:
            assert msg.data == 1001  # going away
        stream.cancel()
    assert not sock.exists()
    assert "Traceback" not in c.log_path.read_text()
    # the store was closed cleanly: the data is there for the next start, and verifies
    verify_ok(c)
    start_again(c)
    assert c.http(token).get("/api/v2/auth").status == 200


def test_sigint_also_stops_cleanly(fresh_controller: Controller) -> None:
    c = fresh_controller
    assert c.stop(signal.SIGINT) == 0
    assert not (c.data_dir / "admin.sock").exists()
