"""TLS: the controller makes its own CA and server certificate on first start; HTTPS, gRPC
and the CLI (pinning the CA by fingerprint) work with it, and nothing else is trusted."""

from __future__ import annotations

import json
import os
import re
import ssl
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from overcast.api.v1 import management_pb2 as pb
from overcast.api.v1 import management_pb2_grpc as pb_grpc
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller


@pytest.fixture(scope="module")
def tls_controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("tls"), {"OVERCAST_TLS": "on"})
    c.extra_env["OVERCAST_EXTERNAL_URL"] = f"https://127.0.0.1:{c.http_port}"
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin")
    c.start()
    yield c
    c.stop()


def _fingerprint(c: Controller) -> str:
    m = re.search(r"CA fingerprint sha256:([0-9a-f]{64})", c.log_path.read_text())
    assert m, "the controller prints its CA fingerprint at start"
    return m.group(1)


def test_pki_files_are_private(tls_controller: Controller) -> None:
    pki = tls_controller.data_dir / "pki"
    for name in ("ca.key", "server.key", "ca.crt", "server.crt"):
        assert stat.S_IMODE(os.stat(pki / name).st_mode) == 0o600


def test_https_verifies_against_the_ca_only(tls_controller: Controller) -> None:
    url = f"https://127.0.0.1:{tls_controller.http_port}/api/v2/health"
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(url, timeout=10)  # system CAs do not know it
    ctx = ssl.create_default_context(cafile=str(tls_controller.data_dir / "pki" / "ca.crt"))
    with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_session_cookie_is_secure_over_tls(tls_controller: Controller) -> None:
    ctx = ssl.create_default_context(cafile=str(tls_controller.data_dir / "pki" / "ca.crt"))
    req = urllib.request.Request(
        f"https://127.0.0.1:{tls_controller.http_port}/api/v2/auth/sessions",
        data=json.dumps({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
        cookies = [c for c in r.headers.get_all("Set-Cookie") if c.startswith("session.id=")]
    assert cookies and "Secure" in cookies[0] and "HttpOnly" in cookies[0]
    assert "SameSite=Lax" in cookies[0]


def test_cli_login_pins_the_ca_by_fingerprint(tls_controller: Controller, tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{tls_controller.http_port}"
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    r = tls_controller.cli("login", url, "--email", ADMIN_EMAIL, "--password-stdin",
                           input=ADMIN_PASSWORD + "\n", env=env)
    assert r.returncode == 3 and "--ca-fingerprint" in r.stderr  # unverifiable: refused
    r = tls_controller.cli("login", url, "--email", ADMIN_EMAIL, "--password-stdin",
                           "--ca-fingerprint", "00" * 32, input=ADMIN_PASSWORD + "\n", env=env)
    assert r.returncode == 3 and "refusing to trust" in r.stderr
    r = tls_controller.cli("login", url, "--email", ADMIN_EMAIL, "--password-stdin",
                           "--ca-fingerprint", "sha256:" + _fingerprint(tls_controller),
                           input=ADMIN_PASSWORD + "\n", env=env)
    assert r.returncode == 0, r.stderr
    r = tls_controller.cli("whoami", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["user"]["email"] == ADMIN_EMAIL


def test_grpc_serves_tls_with_the_same_ca(tls_controller: Controller) -> None:
    token = _token(tls_controller)
    ca = (tls_controller.data_dir / "pki" / "ca.crt").read_bytes()
    with grpc.secure_channel(tls_controller.grpc_addr, grpc.ssl_channel_credentials(ca)) as ch:
        me = pb_grpc.ManagementStub(ch).Whoami(pb.WhoamiRequest(), timeout=10,
                                               metadata=[("authorization", f"Bearer {token}")])
    assert me.user.email == ADMIN_EMAIL
    with grpc.insecure_channel(tls_controller.grpc_addr) as ch, pytest.raises(grpc.RpcError):
        pb_grpc.ManagementStub(ch).Whoami(pb.WhoamiRequest(), timeout=5,
                                          metadata=[("authorization", f"Bearer {token}")])


def _token(c: Controller) -> str:
    ctx = ssl.create_default_context(cafile=str(c.data_dir / "pki" / "ca.crt"))
    base = f"https://127.0.0.1:{c.http_port}"

    def call(path: str, body: dict, headers: dict[str, str]) -> tuple[dict, list[str]]:  # type: ignore[type-arg]
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return json.loads(r.read()), r.headers.get_all("Set-Cookie") or []

    login, cookies = call("/api/v2/auth/sessions", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, {})
    cookie = "; ".join(c.split(";", 1)[0] for c in cookies)
    tok, _ = call("/api/v2/auth/tokens", {"name": "grpc-tls"},
                  {"Cookie": cookie, "X-CSRF-Token": login["data"]["csrf_token"]})
    return str(tok["token"])
