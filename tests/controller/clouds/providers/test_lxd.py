"""The LXD adapter (libcloud's LXD driver) against a small local server answering LXD's REST
API shapes (sync, async operations, errors), over HTTPS with a client certificate the way LXD
is reached, and over plain HTTP for the request-mapping tests."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller import pki
from controller.clouds.providers import registry
from controller.clouds.providers.base import Capability, CreateMachine, Unsupported
from controller.clouds.providers.lxd.adapter import LxdAdapter
from controller.errors import Conflict, Invalid, NotFound, ProviderAuthError, ProviderUnavailable

FP = "a" * 64


def _instance(name: str, status: str, **config: str) -> dict[str, Any]:
    return {"name": name, "status": status, "status_code": 103 if status == "Running" else 102,
            "type": "container", "architecture": "x86_64", "ephemeral": False,
            "profiles": ["default"], "created_at": "2024-05-01T10:00:00Z", "description": "",
            "location": "none", "config": {"volatile.base_image": FP, "image.os": "Debian",
                                           **config},
            "devices": {}, "expanded_config": {}, "expanded_devices": {}}


class Lxd:
    """The server's state and what it was asked."""

    def __init__(self) -> None:
        self.instances = {"web": _instance("web", "Running", **{"limits.cpu": "2",
                                                                 "user.env": "prod"}),
                          "db": _instance("db", "Stopped"),
                          "bare": _instance("bare", "Running")}  # no eth0
        self.requests: list[tuple[str, str, Any]] = []
        self.auth = ""


def _sync(meta: Any) -> tuple[int, dict[str, Any]]:
    return 200, {"type": "sync", "status": "Success", "status_code": 200, "operation": "",
                 "error_code": 0, "error": "", "metadata": meta}


def _async() -> tuple[int, dict[str, Any]]:
    op = uuid.uuid4().hex
    return 202, {"type": "async", "status": "Operation created", "status_code": 100,
                 "operation": f"/1.0/operations/{op}", "error_code": 0, "error": "",
                 "metadata": {"id": op, "class": "task", "status": "Running", "status_code": 103}}


def _error(code: int, message: str) -> tuple[int, dict[str, Any]]:
    return code, {"type": "error", "error": message, "error_code": code, "metadata": None}


TRANSITIONS = {"start": "Running", "stop": "Stopped", "restart": "Running", "freeze": "Frozen",
               "unfreeze": "Running"}


def answer(lxd: Lxd, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    path = path.split("?")[0]
    parts = path.strip("/").split("/")
    if path == "/1.0":
        return _sync({"api_extensions": [], "api_status": "stable", "api_version": "1.0",
                      "auth": "trusted", "public": False, "config": {},
                      "environment": {"server_name": "lxd1", "server_version": "5.0.2",
                                      "kernel": "Linux", "kernel_version": "6.1.0",
                                      "storage": "dir"}})
    if path.startswith("/1.0/operations/"):
        return _sync({"status": "Success", "status_code": 200})
    if path == "/1.0/images":
        return _sync([f"/1.0/images/{FP}"])
    if path == f"/1.0/images/{FP}":
        return _sync({"fingerprint": FP, "aliases": [{"name": "debian/12"}],
                      "properties": {"os": "Debian", "description": "Debian 12"},
                      "architecture": "x86_64", "size": 1000, "update_source": {}})
    if path == "/1.0/containers" and method == "GET":
        return _sync([f"/1.0/containers/{n}" for n in lxd.instances])
    if path == "/1.0/containers" and method == "POST":
        name = body["name"]
        if name in lxd.instances:
            return _error(409, "This container already exists")
        lxd.instances[name] = _instance(name, "Stopped", **body.get("config", {}))
        return _async()
    if len(parts) >= 3 and parts[1] == "containers":
        inst = lxd.instances.get(parts[2])
        if inst is None:
            return _error(404, "not found")
        if len(parts) == 3 and method == "GET":
            return _sync(inst)
        if len(parts) == 3 and method == "DELETE":
            if inst["status"] != "Stopped":
                return _error(400, "container is running")
            del lxd.instances[parts[2]]
            return _async()
        if parts[3:] == ["state"] and method == "GET":
            eth0 = {"addresses": [{"family": "inet", "address": "10.1.2.3", "netmask": "24"},
                                  {"family": "inet6", "address": "fe80::1", "netmask": "64"}]}
            lo = {"addresses": [{"family": "inet", "address": "127.0.0.1"}]}
            network = {"lo": lo} if parts[2] == "bare" else {"eth0": eth0, "lo": lo}
            return _sync({"status": inst["status"], "network": network})
        if parts[3:] == ["state"] and method == "PUT":
            inst["status"] = TRANSITIONS[body["action"]]
            return _async()
    return _error(404, "not found")


def _handler(lxd: Lxd) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            lxd.requests.append((self.command, self.path, body))
            if lxd.auth and self.headers.get("Authorization") != lxd.auth:
                status, data = _error(403, "not authorized")
            else:
                status, data = answer(lxd, self.command, self.path, body)
            out = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_PUT = do_POST = do_DELETE = _serve  # noqa: N815 (http.server's names)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[Lxd, int]]:
    lxd = Lxd()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(lxd))
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield lxd, srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def adapter(server: tuple[Lxd, int]) -> Iterator[LxdAdapter]:
    a = registry.build("lxd", {"host": "http://127.0.0.1", "port": str(server[1])}, {}, 5.0)
    assert isinstance(a, LxdAdapter)
    yield a
    a.close()


def states(a: LxdAdapter) -> dict[str, str]:
    return {m.name: m.state for m in a.list_machines()}


def test_lists_the_server_and_its_instances(adapter: LxdAdapter) -> None:
    adapter.check()
    machines = {m.external_id: m for m in adapter.list_machines()}
    host = machines.pop("host:127.0.0.1")
    assert (host.name, host.state, host.extra["server_version"]) == ("lxd1", "running", "5.0.2")
    web = machines["web"]
    assert (web.state, web.cores, web.tags, web.image) == ("running", 2, {"env": "prod"}, FP)
    assert web.private_ips == ["10.1.2.3"]  # link-local fe80:: dropped
    assert web.parent == "host:127.0.0.1" and web.os_type == "debian"
    assert web.created == "2024-05-01T10:00:00Z" and web.extra["kind"] == "container"
    assert machines["db"].state == "stopped"
    assert machines["bare"].state == "running" and machines["bare"].private_ips == []


def test_start_stop_map_to_state_puts(adapter: LxdAdapter, server: tuple[Lxd, int]) -> None:
    lxd, _ = server
    adapter.machine_action(Capability.START, "db", {})
    adapter.machine_action(Capability.STOP, "web", {})
    puts = [(p.split("?")[0], b) for m, p, b in lxd.requests if m == "PUT"]
    assert puts[0][0] == "/1.0/containers/db/state" and puts[0][1]["action"] == "start"
    assert puts[1][0] == "/1.0/containers/web/state" and puts[1][1]["action"] == "stop"
    assert all(isinstance(b["timeout"], int) for _, b in puts)
    waits = [p for m, p, _ in lxd.requests if p.startswith("/1.0/operations/")]
    assert len(waits) == 2 and all("/wait?timeout=" in p for p in waits)
    assert states(adapter)["db"] == "running" and states(adapter)["web"] == "stopped"


def test_reboot_suspend_resume_and_idempotent_start(adapter: LxdAdapter,
                                                     server: tuple[Lxd, int]) -> None:
    lxd, _ = server
    adapter.machine_action(Capability.REBOOT, "web", {})
    adapter.machine_action(Capability.SUSPEND, "web", {})
    assert states(adapter)["web"] == "paused"
    adapter.machine_action(Capability.RESUME, "web", {})
    adapter.machine_action(Capability.SUSPEND, "web", {})
    adapter.machine_action(Capability.START, "web", {})  # start of a frozen one thaws it
    adapter.machine_action(Capability.START, "web", {})  # running: nothing sent
    actions = [b["action"] for m, _, b in lxd.requests if m == "PUT"]
    assert actions == ["restart", "freeze", "unfreeze", "freeze", "unfreeze"]


def test_destroy_stops_first_then_deletes(adapter: LxdAdapter, server: tuple[Lxd, int]) -> None:
    lxd, _ = server
    adapter.machine_action(Capability.DESTROY, "web", {})
    calls = [(m, p.split("?")[0]) for m, p, _ in lxd.requests if m in ("PUT", "DELETE")]
    assert calls == [("PUT", "/1.0/containers/web/state"), ("DELETE", "/1.0/containers/web")]
    assert "web" not in states(adapter)


def test_create_from_an_image(adapter: LxdAdapter, server: tuple[Lxd, int]) -> None:
    lxd, _ = server
    m = adapter.create_machine(CreateMachine(name="new-1", image="debian/12", tags={"team": "a"},
                                             extra={"cpus": 2, "ram_mb": 512}))
    post = next(b for meth, p, b in lxd.requests if meth == "POST")
    assert post["name"] == "new-1" and post["source"] == {"type": "image", "alias": "debian/12"}
    assert post["config"] == {"user.team": "a", "limits.cpu": "2", "limits.memory": "512MB"}
    assert post["profiles"] == ["default"]
    assert m.state == "running" and m.tags == {"team": "a"} and m.cores == 2
    images = adapter.list_images()
    assert [(i.external_id, i.name, i.os_type) for i in images] == [(FP, "debian/12", "debian")]


def test_errors_are_the_domains(adapter: LxdAdapter) -> None:
    with pytest.raises(NotFound):
        adapter.machine_action(Capability.START, "ghost", {})
    with pytest.raises(NotFound):
        adapter.machine_action(Capability.START, "../1.0/images", {})
    with pytest.raises(Unsupported):
        adapter.machine_action(Capability.STOP, "host:127.0.0.1", {})
    with pytest.raises(Unsupported):
        adapter.machine_action(Capability.RENAME, "web", {"name": "x"})
    with pytest.raises(Conflict):
        adapter.create_machine(CreateMachine(name="web", image=FP))
    with pytest.raises(Invalid):
        adapter.create_machine(CreateMachine(name="under_score", image=FP))


def test_show_all_false_hides_stopped(server: tuple[Lxd, int]) -> None:
    a = LxdAdapter({"host": "http://127.0.0.1", "port": server[1], "showAll": False}, {})
    assert "db" not in states(a) and "web" in states(a)


def test_basic_auth_refused_is_an_auth_error(server: tuple[Lxd, int]) -> None:
    lxd, port = server
    lxd.auth = "Basic b3BzOnJpZ2h0"  # ops:right
    ok = LxdAdapter({"host": "http://127.0.0.1", "port": port, "username": "ops"},
                    {"password": "right"})
    ok.check()
    with pytest.raises(ProviderAuthError) as err:
        LxdAdapter({"host": "http://127.0.0.1", "port": port, "username": "ops"},
                   {"password": "wrong"}).check()
    assert "wrong" not in err.value.message


def test_config_checks() -> None:
    for config in ({}, {"host": "unix:///var/lib/lxd/unix.socket"}, {"host": "h", "port": "x"}):
        with pytest.raises(Invalid):
            LxdAdapter(config, {})
    with pytest.raises(Invalid):
        LxdAdapter({"host": "h"}, {"tlsCert": "C"}).check()  # without its key
    s = registry.spec("lxd")
    assert {f.name for f in s.fields if f.secret} == {"password", "tlsKey", "tlsCert",
                                                      "tlsCaCert"}
    a = LxdAdapter({"host": "https://localhost"}, {})
    assert (a.endpoint.host, a.endpoint.port) == ("localhost", 8443)  # libcloud would say "localhos"


# ---- over HTTPS with a client certificate, as LXD is reached --------------------------------
def _client_cert(ca: pki.Pki) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "overcast")]))
           .sign(key, hashes.SHA256()))
    cert, _, _ = pki.sign_agent_csr(ca, csr.public_bytes(serialization.Encoding.PEM),
                                    "overcast", 3600)
    return cert.decode(), key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Lxd, int, pki.Pki]]:
    ca = pki.ensure_pki(str(tmp_path), ["127.0.0.1"])
    ctx = ca.server_ssl_context()
    ctx.verify_mode = ssl.CERT_REQUIRED  # LXD wants a client certificate
    ctx.load_verify_locations(cadata=ca.ca_pem.decode())
    lxd = Lxd()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(lxd))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield lxd, srv.server_address[1], ca
    srv.shutdown()
    srv.server_close()


def test_https_with_client_certificate_and_pinned_server(
        tls_server: tuple[Lxd, int, pki.Pki]) -> None:
    lxd, port, ca = tls_server
    cert, key = _client_cert(ca)
    a = LxdAdapter({"host": "127.0.0.1", "port": port},
                   {"tlsCert": cert, "tlsKey": key, "tlsCaCert": ca.ca_pem.decode()})
    assert states(a)["web"] == "running"
    a.machine_action(Capability.STOP, "web", {})
    assert states(a)["web"] == "stopped"
    a.close()


def test_https_refuses_a_server_from_another_ca(tls_server: tuple[Lxd, int, pki.Pki],
                                                tmp_path: Path) -> None:
    _, port, ca = tls_server
    other = pki.ensure_pki(str(tmp_path / "other"), ["127.0.0.1"])
    cert, key = _client_cert(ca)
    a = LxdAdapter({"host": "127.0.0.1", "port": port},
                   {"tlsCert": cert, "tlsKey": key, "tlsCaCert": other.ca_pem.decode()})
    with pytest.raises(ProviderUnavailable):
        a.check()
