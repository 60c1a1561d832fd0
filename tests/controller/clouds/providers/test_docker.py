"""The Docker adapter against a real Engine API (a podman API service on a unix socket, see
``tests.support.docker_host``), plus TLS, basic auth and failures against a small local HTTPS
server answering the Engine API's shapes."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
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
from controller.clouds.providers.docker.adapter import DockerAdapter, endpoint
from controller.errors import (
    Conflict,
    CredentialsRefused,
    Invalid,
    NotFound,
    ProviderUnavailable,
)
from tests.support import docker_host
from tests.support.docker_host import IMAGE, SERVE, DockerHost


# ---- a real daemon --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerHost]:
    yield from docker_host.running_daemon(tmp_path_factory.mktemp("podman"))


@pytest.fixture
def docker(daemon: DockerHost) -> Iterator[DockerAdapter]:
    adapter = registry.build("docker", {"socket": str(daemon.socket)}, {}, 20.0)
    assert isinstance(adapter, DockerAdapter)
    yield adapter
    adapter.close()


def make(adapter: DockerAdapter, start: bool = True, **tags: str) -> str:
    """A container of the test's own (no network: the host's bridges stay untouched)."""
    m = adapter.create_machine(CreateMachine(
        name=f"t-{uuid.uuid4().hex[:8]}", image=IMAGE, tags=tags,
        extra={"command": SERVE, "network_mode": "none", "start": start}))
    return m.external_id


def state(adapter: DockerAdapter, cid: str) -> str:
    return {m.external_id: m.state for m in adapter.list_machines()}.get(cid, "gone")


def test_lists_the_host_and_its_containers_as_a_tree(docker: DockerAdapter) -> None:
    docker.check()
    cid = make(docker, role="web")
    machines = {m.external_id: m for m in docker.list_machines()}
    host = machines["host:localhost"]
    assert host.state == "running" and host.cores > 0 and host.extra["kind"] == "container-host"
    c = machines[cid]
    assert c.parent == "host:localhost" and c.state == "running" and c.tags == {"role": "web"}
    assert c.extra["image_name"] == IMAGE and c.image.startswith("sha256:")
    assert c.created.endswith("Z")
    docker.machine_action(Capability.DESTROY, cid, {})


def test_images_are_the_daemons(docker: DockerAdapter) -> None:
    assert IMAGE in {i.name for i in docker.list_images()}


def test_stop_start_reboot_suspend_resume(docker: DockerAdapter) -> None:
    cid = make(docker)
    docker.machine_action(Capability.STOP, cid, {"timeout": 5})
    assert state(docker, cid) == "stopped"
    docker.machine_action(Capability.STOP, cid, {})  # already stopped (304): fine
    docker.machine_action(Capability.START, cid, {})
    assert state(docker, cid) == "running"
    docker.machine_action(Capability.REBOOT, cid, {"timeout": 5})
    assert state(docker, cid) == "running"
    docker.machine_action(Capability.SUSPEND, cid, {})
    assert state(docker, cid) == "paused"
    docker.machine_action(Capability.RESUME, cid, {})
    assert state(docker, cid) == "running"
    docker.machine_action(Capability.SUSPEND, cid, {})
    docker.machine_action(Capability.START, cid, {})  # start of a paused container unpauses
    assert state(docker, cid) == "running"
    docker.machine_action(Capability.DESTROY, cid, {})


def test_destroy_removes_even_a_running_container(docker: DockerAdapter) -> None:
    cid = make(docker)
    docker.machine_action(Capability.DESTROY, cid, {})
    assert state(docker, cid) == "gone"
    with pytest.raises(NotFound):
        docker.machine_action(Capability.START, cid, {})


def test_create_without_start_and_rename(docker: DockerAdapter) -> None:
    cid = make(docker, start=False)
    assert state(docker, cid) == "stopped"  # "created": never started
    new = f"renamed-{uuid.uuid4().hex[:6]}"
    docker.machine_action(Capability.RENAME, cid, {"name": new})
    assert {m.external_id: m.name for m in docker.list_machines()}[cid] == new
    with pytest.raises(Conflict):  # the name is taken now
        docker.create_machine(CreateMachine(name=new, image=IMAGE,
                                            extra={"network_mode": "none", "command": "true"}))
    docker.machine_action(Capability.DESTROY, cid, {})


def test_show_all_false_hides_stopped_containers(docker: DockerAdapter, daemon: DockerHost) -> None:
    cid = make(docker, start=False)
    running_only = DockerAdapter({"socket": str(daemon.socket), "showAll": False}, {})
    assert cid not in {m.external_id for m in running_only.list_machines()}
    docker.machine_action(Capability.DESTROY, cid, {})


def test_errors_are_the_domains(docker: DockerAdapter) -> None:
    with pytest.raises(NotFound):
        docker.machine_action(Capability.START, "0" * 64, {})
    with pytest.raises(NotFound):  # never a path of its own
        docker.machine_action(Capability.START, "../images/x", {})
    with pytest.raises(Unsupported):
        docker.machine_action(Capability.STOP, "host:localhost", {})
    with pytest.raises(Unsupported):
        docker.machine_action(Capability.RESIZE, "0" * 64, {})
    with pytest.raises(Invalid):  # nothing is pulled
        docker.create_machine(CreateMachine(name="x1", image="localhost/absent:1"))
    with pytest.raises(Invalid):
        docker.create_machine(CreateMachine(name="bad name", image=IMAGE))
    with pytest.raises(Invalid):
        docker.create_machine(CreateMachine(name="x2", image=IMAGE, size="large"))


# ---- configuration --------------------------------------------------------------------------
def test_endpoint_forms() -> None:
    assert endpoint({"host": "d.example", "port": "2375"}, {}).label == "d.example:2375"
    e = endpoint({"host": "https://d.example"}, {})
    assert (e.host, e.port, e.tls) == ("d.example", 2376, True)
    e = endpoint({"host": "tcp://10.0.0.5:4243"}, {"tlsCaCert": "PEM"})
    assert (e.host, e.port, e.tls) == ("10.0.0.5", 4243, True)
    assert endpoint({"host": "unix:///run/docker.sock"}, {}).socket == "/run/docker.sock"
    assert endpoint({"socket": "/run/podman/podman.sock"}, {}).label == \
        "unix:///run/podman/podman.sock"
    for bad in ({}, {"socket": "relative.sock"}, {"socket": "/a/../b"},
                {"socket": "/s", "host": "h"}, {"host": "h", "port": "x"},
                {"host": "h", "port": 70000}, {"host": "user@h"}, {"host": "h/path"}):
        with pytest.raises(Invalid):
            endpoint(bad, {})


def test_spec_declares_secrets_and_imports_no_driver() -> None:
    s = registry.spec("docker")
    secret = {f.name for f in s.fields if f.secret}
    assert secret == {"password", "tlsKey", "tlsCert", "tlsCaCert"}
    assert s.adapter.endswith(":DockerAdapter")


def test_unreachable_daemon_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ProviderUnavailable):
        DockerAdapter({"socket": str(tmp_path / "none.sock")}, {}).check()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProviderUnavailable):  # nothing listens there
        DockerAdapter({"host": "127.0.0.1", "port": port}, {}, timeout=2).check()


# ---- TLS and basic auth against a local Engine-shaped HTTPS server --------------------------
VERSION = {"ApiVersion": "1.43", "MinAPIVersion": "1.24", "Version": "24.0.7"}
INFO = {"Name": "dockerhost", "NCPU": 4, "MemTotal": 8 << 30, "OSType": "linux",
        "ServerVersion": "24.0.7", "OperatingSystem": "Debian GNU/Linux 12"}
CONTAINERS = [{"Id": "a" * 64, "Names": ["/web"], "Image": "nginx:1", "ImageID": "sha256:" + "b" * 64,
               "Command": "nginx", "Created": 1700000000, "State": "paused",
               "Status": "Up 2 hours (Paused)", "Labels": {"env": "prod"},
               "Ports": [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}],
               "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2",
                                                           "MacAddress": "02:42:AC:11:00:02"}}}}]


class _Engine(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []
    want_auth = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        if self.want_auth and self.headers.get("Authorization") != self.want_auth:
            return self._send(401, {"message": "authentication required"})
        routes: dict[str, Any] = {"/version": VERSION, "/v1.41/info": INFO,
                                  "/v1.41/containers/json?all=1": CONTAINERS}
        if self.path in routes:
            return self._send(200, routes[self.path])
        return self._send(404, {"message": f"page not found: {self.path}"})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def _client_cert(ca: pki.Pki) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "overcast")]))
           .sign(key, hashes.SHA256()))
    cert, _, _ = pki.sign_agent_csr(ca, csr.public_bytes(serialization.Encoding.PEM),
                                    "overcast", 3600)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.decode(), key_pem.decode()


@pytest.fixture
def tls_engine(tmp_path: Path) -> Iterator[tuple[int, pki.Pki]]:
    ca = pki.ensure_pki(str(tmp_path), ["127.0.0.1"])
    ctx = ca.server_ssl_context()
    ctx.verify_mode = ssl.CERT_REQUIRED  # like dockerd --tlsverify
    ctx.load_verify_locations(cadata=ca.ca_pem.decode())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    _Engine.seen, _Engine.want_auth = [], ""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1], ca
    server.shutdown()
    server.server_close()


def test_tls_with_client_certificate_and_pinned_ca(tls_engine: tuple[int, pki.Pki]) -> None:
    port, ca = tls_engine
    cert, key = _client_cert(ca)
    secrets = {"tlsCaCert": ca.ca_pem.decode(), "tlsCert": cert, "tlsKey": key}
    adapter = DockerAdapter({"host": "127.0.0.1", "port": str(port)}, secrets, timeout=5)
    machines = {m.external_id: m for m in adapter.list_machines()}
    host = machines["host:127.0.0.1"]
    assert (host.name, host.cores, host.extra["memory_mb"]) == ("dockerhost", 4, 8192)
    web = machines["a" * 64]
    assert (web.name, web.state, web.parent) == ("web", "paused", "host:127.0.0.1")
    assert web.private_ips == ["172.17.0.2"] and web.macs == ["02:42:ac:11:00:02"]
    assert web.extra["ports"] == ["0.0.0.0:8080->80/tcp"] and web.tags == {"env": "prod"}
    assert web.created == dt.datetime.fromtimestamp(1700000000, dt.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    assert [p for p, _ in _Engine.seen][:1] == ["/version"]  # then pinned to v1.41


def test_tls_refuses_a_server_from_another_ca(tls_engine: tuple[int, pki.Pki],
                                              tmp_path: Path) -> None:
    port, ca = tls_engine
    other = pki.ensure_pki(str(tmp_path / "other"), ["127.0.0.1"])
    cert, key = _client_cert(ca)
    secrets = {"tlsCaCert": other.ca_pem.decode(), "tlsCert": cert, "tlsKey": key}
    with pytest.raises(CredentialsRefused) as err:
        DockerAdapter({"host": "127.0.0.1", "port": port}, secrets, timeout=5).check()
    assert "TLS" in err.value.message and "BEGIN" not in err.value.message
    assert "tlsCaCert" in err.value.message
    assert err.value.details["field"] == "credentials.tlsCaCert" and err.value.status == 422


def test_tls_without_a_client_certificate_is_refused(tls_engine: tuple[int, pki.Pki]) -> None:
    port, ca = tls_engine
    with pytest.raises(CredentialsRefused) as err:
        DockerAdapter({"host": "127.0.0.1", "port": port}, {"tlsCaCert": ca.ca_pem.decode()},
                      timeout=5).check()
    assert "client certificate" in err.value.message
    assert err.value.details["field"] == "credentials.tlsCert"


def test_tls_with_a_client_certificate_of_another_ca_is_refused(
        tls_engine: tuple[int, pki.Pki], tmp_path: Path) -> None:
    port, ca = tls_engine
    other = pki.ensure_pki(str(tmp_path / "other"), ["127.0.0.1"])
    cert, key = _client_cert(other)
    secrets = {"tlsCaCert": ca.ca_pem.decode(), "tlsCert": cert, "tlsKey": key}
    with pytest.raises(CredentialsRefused) as err:
        DockerAdapter({"host": "127.0.0.1", "port": port}, secrets, timeout=5).check()
    assert err.value.details["field"] == "credentials.tlsCert"
    assert "BEGIN" not in err.value.message


def test_bad_pem_is_invalid_and_not_quoted(tls_engine: tuple[int, pki.Pki]) -> None:
    port, ca = tls_engine
    secrets = {"tlsCaCert": ca.ca_pem.decode(), "tlsCert": "not a cert", "tlsKey": "SECRETKEY"}
    with pytest.raises(Invalid) as err:
        DockerAdapter({"host": "127.0.0.1", "port": port}, secrets).check()
    assert "SECRETKEY" not in err.value.message


def test_basic_auth_is_sent_and_refusal_is_an_auth_error(tls_engine: tuple[int, pki.Pki]) -> None:
    port, ca = tls_engine
    cert, key = _client_cert(ca)
    secrets = {"tlsCaCert": ca.ca_pem.decode(), "tlsCert": cert, "tlsKey": key,
               "password": "s3cret"}
    _Engine.want_auth = "Basic b3BzOnMzY3JldA=="  # ops:s3cret
    DockerAdapter({"host": "127.0.0.1", "port": port, "username": "ops"}, secrets).check()
    secrets["password"] = "wrong"
    with pytest.raises(CredentialsRefused) as err:
        DockerAdapter({"host": "127.0.0.1", "port": port, "username": "ops"}, secrets).check()
    assert "wrong" not in err.value.message
    assert err.value.details["field"] == "credentials.password"
