"""Agents refused, clearly, audited, storing nothing: bad join tokens, the wrong CA
fingerprint, a certificate from another CA, a hello that claims another agent's id, a
renewal CSR for another id, oversized and malformed messages; and renewal working."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.state import make_key_and_csr
from overcast.agent.v1 import agent_pb2 as pb
from overcast.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    # certificates live 3 minutes here: renewal (at a third of the life left) happens at once
    c = Controller(tmp_path_factory.mktemp("agsec"), {"OVERCAST_AGENT_CERT_TTL": "180"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Sec")
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def admin(ctl: Controller) -> Http:
    return ctl.http(ctl.token(name="agsec"))


def _audit(admin: Http, action: str) -> list[dict[str, Any]]:
    r = admin.get(f"/api/v2/logs?action={action}&limit=1000")
    assert r.status == 200, r.body
    return r.body["data"]  # type: ignore[no-any-return]


def _machines(admin: Http) -> int:
    return int(admin.get("/api/v2/machines").body["meta"]["total"])


def _enrol_raw(ctl: Controller, token: str, csr: bytes | None = None) -> tuple[int, Any]:
    if csr is None:
        _, csr = make_key_and_csr("probe")
    r = ctl.http().post("/api/v2/agents/enroll", {"join_token": token, "csr_pem": csr.decode(),
                                                  "hostname": "probe", "protocol_version": 1})
    return r.status, r.body


def test_bad_join_tokens_are_refused_audited_and_store_nothing(ctl: Controller, admin: Http) -> None:
    before = _machines(admin)
    status, body = _enrol_raw(ctl, "ocj_" + "x" * 40)
    assert status == 401 and body["error"]["message"] == "the join token is not valid"
    expired = join_token(admin, ttl=1)
    time.sleep(1.5)
    status, body = _enrol_raw(ctl, expired["token"])
    assert status == 401 and "expired" in body["error"]["message"]
    one = join_token(admin, uses=1)
    assert _enrol_raw(ctl, one["token"])[0] == 201
    status, body = _enrol_raw(ctl, one["token"])
    assert status == 401 and "used up" in body["error"]["message"]
    deleted = join_token(admin)
    assert admin.delete(f"/api/v2/agents/tokens/{deleted['id']}").status == 204
    status, _ = _enrol_raw(ctl, deleted["token"])
    assert status == 401
    status, body = _enrol_raw(ctl, join_token(admin)["token"], b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n")
    assert status == 422 and body["error"]["details"]["field"] == "csr_pem"
    assert _machines(admin) == before + 1  # only the one good enrolment
    denied = [e for e in _audit(admin, "agent.enroll") if e["outcome"] == "denied"]
    reasons = " | ".join(e["details"]["reason"] for e in denied)
    assert "expired" in reasons and "used up" in reasons
    # the listing never shows a join token's secret
    listed = admin.get("/api/v2/agents/tokens").body["data"]
    assert listed and all("token" not in t and "command" not in t for t in listed)


def test_wrong_ca_fingerprint_is_refused_before_anything_is_sent(ctl: Controller, admin: Http,
                                                                 tmp_path: Path) -> None:
    tok = join_token(admin)
    a = AgentProc(ctl, tmp_path / "agent")
    r = a.enrol(tok["token"], fingerprint="sha256:" + "00" * 32)
    assert r.returncode == 3 and "refusing to trust it" in r.stderr
    assert not (tmp_path / "agent" / "cert.pem").exists()
    # the token was not spent
    listed = {t["id"]: t for t in admin.get("/api/v2/agents/tokens").body["data"]}
    assert listed[tok["id"]]["used"] == 0


def _enrolled(ctl: Controller, admin: Http, tmp_path: Path, name: str) -> AgentProc:
    a = AgentProc(ctl, tmp_path / name, hostname=name)
    r = a.enrol(join_token(admin)["token"])
    assert r.returncode == 0, r.stderr
    return a


def _channel(ctl: Controller, key: bytes, cert: bytes) -> grpc.Channel:
    ca = (ctl.data_dir / "pki" / "ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(f"127.0.0.1:{ctl.agents_port}", creds)


def _connect(ch: grpc.Channel, *msgs: pb.AgentMessage) -> tuple[list[pb.ControllerMessage], grpc.RpcError | None]:
    out: list[pb.ControllerMessage] = []
    try:
        for m in pb_grpc.AgentServiceStub(ch).Connect(iter(msgs), timeout=10):
            out.append(m)
    except grpc.RpcError as exc:
        return out, exc
    return out, None


def test_a_certificate_from_another_ca_is_refused(ctl: Controller, admin: Http, tmp_path: Path) -> None:
    victim = _enrolled(ctl, admin, tmp_path, "victim")
    # a CA of the attacker's own, issuing a certificate that names the victim's agent id
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil CA")])
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, victim.agent_id)]))
        .issuer_name(name).public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
        .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with _channel(ctl, key_pem, cert.public_bytes(serialization.Encoding.PEM)) as ch:
        got, err = _connect(ch, pb.AgentMessage(hello=pb.Hello(agent_id=victim.agent_id)))
    assert err is not None and not got  # the TLS handshake itself fails
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # and without any client certificate there is no stream either
    ca = (ctl.data_dir / "pki" / "ca.crt").read_bytes()
    with grpc.secure_channel(f"127.0.0.1:{ctl.agents_port}", grpc.ssl_channel_credentials(ca)) as ch:
        got, err = _connect(ch, pb.AgentMessage(hello=pb.Hello()))
    assert err is not None and not got


def test_a_hello_claiming_another_id_is_refused_and_audited(ctl: Controller, admin: Http,
                                                            tmp_path: Path) -> None:
    me = _enrolled(ctl, admin, tmp_path, "me")
    other = _enrolled(ctl, admin, tmp_path, "other")
    key, cert = (me.state_dir / "key.pem").read_bytes(), (me.state_dir / "cert.pem").read_bytes()
    with _channel(ctl, key, cert) as ch:
        got, err = _connect(ch, pb.AgentMessage(hello=pb.Hello(agent_id=other.agent_id, protocol_version=1)))
    assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "claims agent id" in (err.details() or "")
    entries = _audit(admin, "agent.impersonation")
    assert entries and entries[0]["target"]["id"] == me.agent_id and entries[0]["outcome"] == "denied"
    # nothing about the other agent changed: it never connected
    other_view = admin.get(f"/api/v2/agents/{other.agent_id}").body["data"]
    assert not other_view["connected"] and not other_view.get("connected_since")
    # its machine is still pending (never seen)
    m = admin.get(f"/api/v2/machines/{other.agent_id}").body["data"]
    assert m["state"] == "pending"


def test_oversized_and_malformed_messages_are_refused(ctl: Controller, admin: Http, tmp_path: Path) -> None:
    me = _enrolled(ctl, admin, tmp_path, "big")
    key, cert = (me.state_dir / "key.pem").read_bytes(), (me.state_dir / "cert.pem").read_bytes()
    huge = pb.MetricBatch(seq=1, samples=[pb.Sample(metric="x" * 1000, value=1.0, time_ms=1)] * 5000)
    hello = pb.AgentMessage(hello=pb.Hello(agent_id=me.agent_id, protocol_version=1))
    with _channel(ctl, key, cert) as ch:
        got, err = _connect(ch, hello, pb.AgentMessage(metrics=huge))
    assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # a stream that does not start with hello
    with _channel(ctl, key, cert) as ch:
        got, err = _connect(ch, pb.AgentMessage(metrics=pb.MetricBatch(seq=1)))
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # nothing was stored for it
    r = admin.get(f'/api/v2/datapoints?query=x{{machine_id="{me.agent_id}"}}')
    assert r.body["data"]["data"]["result"] == []
    # malformed bytes on the wire end the stream without harm to the controller
    with _channel(ctl, key, cert) as ch:
        raw = ch.stream_stream("/overcast.agent.v1.AgentService/Connect",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError):
            list(raw(iter([b"\xff\xff\xff\xff garbage"]), timeout=10))
    assert ctl.http().get("/api/v2/health").status == 200


def test_renewal_csr_for_another_id_is_refused_and_a_real_renewal_works(
        ctl: Controller, admin: Http, tmp_path: Path) -> None:
    me = _enrolled(ctl, admin, tmp_path, "renew")
    key, cert = (me.state_dir / "key.pem").read_bytes(), (me.state_dir / "cert.pem").read_bytes()
    _, foreign_csr = make_key_and_csr("0" * 32)
    with _channel(ctl, key, cert) as ch:
        stub = pb_grpc.AgentServiceStub(ch)
        msgs = [pb.AgentMessage(hello=pb.Hello(agent_id=me.agent_id, protocol_version=1)),
                pb.AgentMessage(renew=pb.RenewRequest(csr_pem=foreign_csr))]
        call = stub.Connect(iter(msgs), timeout=3)
        got = []
        try:
            for m in call:
                got.append(m.WhichOneof("body"))
        except grpc.RpcError:
            pass  # the stream ends when our messages run out, or at the timeout
    assert "renew" not in got
    refused = [e for e in _audit(admin, "agent.renew") if e["outcome"] == "denied"]
    assert refused and "not for this agent" in refused[0]["details"]["reason"]
    # the real agent renews by itself (a third of its 3-minute life is left at once here)
    old_serial = x509.load_pem_x509_certificate(cert).serial_number
    me.start()
    try:
        wait_for(lambda: x509.load_pem_x509_certificate(
            (me.state_dir / "cert.pem").read_bytes()).serial_number != old_serial, 30, "a renewed certificate")
        ok = [e for e in _audit(admin, "agent.renew") if e["outcome"] == "success"]
        assert ok and ok[0]["target"]["id"] == me.agent_id
        # the new certificate works for a new connection
        me.stop()
        me.start()
        wait_for(lambda: admin.get(f"/api/v2/agents/{me.agent_id}").body["data"]["connected"], 30,
                 "reconnection with the renewed certificate")
    finally:
        me.stop()
