"""``overcast doctor`` against a running controller (the checks run inside it, through the
admin socket) and a stopped one (the files): agents' clocks measured from their metric
batches, the external URL fetched by the controller itself, certificates near expiry, a
broken audit chain; the exit code follows the failures, warnings alone exit 0."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.audit.chain import entry_key
from controller.store import open_store
from overcast.agent.v1 import agent_pb2 as pb
from overcast.agent.v1 import agent_pb2_grpc as pb_grpc
from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, free_port


def _started(tmp: Path, env: dict[str, str] | None = None) -> Controller:
    c = Controller(tmp, env)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    return c.start()


def doctor(c: Controller, env: dict[str, str] | None = None) -> tuple[int, str, dict[str, Any]]:
    text = c.cli("doctor", env=env)
    js = c.cli("doctor", "--json", env=env)
    assert text.returncode == js.returncode, (text.stdout, js.stdout)
    assert "Traceback" not in text.stderr + js.stderr
    return text.returncode, text.stdout, json.loads(js.stdout)


def checks(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in report["checks"]}


async def _skewed_stream(c: Controller, agent: AgentProc, skew: float, then: Any) -> Any:
    """Connect as ``agent`` (its key and certificate), send one metric batch stamped
    ``skew`` seconds off our clock, and call ``then`` in a thread while the stream is open."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(c.data_dir / "pki" / "ca.crt").read_bytes(),
        private_key=(agent.state_dir / "key.pem").read_bytes(),
        certificate_chain=(agent.state_dir / "cert.pem").read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{c.agents_port}", creds) as channel:
        call: Any = pb_grpc.AgentServiceStub(channel).Connect()
        await call.write(pb.AgentMessage(hello=pb.Hello(agent_id=agent.agent_id, protocol_version=1)))
        assert (await call.read()).WhichOneof("body") == "welcome"
        await call.write(pb.AgentMessage(metrics=pb.MetricBatch(
            seq=1, series=[pb.SeriesDef(ref=0, metric="doctor_test")], refs=[0], values=[1.0],
            time_ms=int((time.time() + skew) * 1000), ack_now=True)))
        assert (await call.read()).WhichOneof("body") == "batch_ack"
        result = await asyncio.to_thread(then)
        call.cancel()
        return result


def test_online_checks_and_agents_clocks(tmp_path: Path) -> None:
    c = _started(tmp_path, {"OVERCAST_METRIC_INTERVAL": "1"})
    h = c.session()
    real = AgentProc(c, tmp_path / "real", hostname="on-time")
    assert real.enrol(join_token(h)["token"]).returncode == 0
    real.start()
    try:
        def measured() -> Any:
            code, text, report = doctor(c)
            return (code, text, report) if "measured;" in checks(report)["clock"]["message"] else None

        code, text, report = wait_for(measured, 30, "the agent's clock to be measured")
        assert code == 0 and report["mode"] == "online" and report["failures"] == 0, text
        got = checks(report)
        assert got["clock"]["status"] == "ok" and "(on-time)" in got["clock"]["message"]
        assert got["external_url"]["status"] == "ok"
        assert "answered by this controller" in got["external_url"]["message"]
        assert got["audit"]["status"] == "ok" and got["schema"]["status"] == "ok"
        assert text.startswith(f"checked the controller running on {c.data_dir} (through its admin socket)")
        assert text.rstrip().endswith("all checks passed")

        # an agent whose clock is five minutes ahead
        late = AgentProc(c, tmp_path / "late", hostname="five-minutes-ahead")
        assert late.enrol(join_token(h)["token"]).returncode == 0
        code, text, report = asyncio.run(_skewed_stream(c, late, 300.0, lambda: doctor(c)))
        clock = checks(report)["clock"]
        assert code == 1 and clock["status"] == "fail", text
        assert "+300." in clock["message"] and "five-minutes-ahead" in clock["message"]
        assert "fail  clock" in text and "fix: run NTP" in text
        assert text.rstrip().endswith("1 failure, 0 warnings")
    finally:
        real.stop()
        c.stop()


def test_an_external_url_answered_by_something_else(tmp_path: Path) -> None:
    # a proxy that forwards nowhere: the controller was told not to check at start
    port = free_port()
    c = _started(tmp_path, {"OVERCAST_EXTERNAL_URL": f"http://127.0.0.1:{port}",
                            "OVERCAST_BEHIND_PROXY": "true", "OVERCAST_CHECK_EXTERNAL_URL": "false"})
    try:
        code, text, report = doctor(c)
        got = checks(report)["external_url"]
        assert code == 1 and got["status"] == "fail"
        assert f"http://127.0.0.1:{port}/api/v2/health did not answer" in got["message"]
        assert "set external_url" in got["fix"]
    finally:
        c.stop()


def _short_cert(tmp: Path, days: float) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, k = tmp / "own.crt", tmp / "own.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return crt, k


def test_offline_checks_a_certificate_near_expiry_and_a_broken_audit_chain(tmp_path: Path) -> None:
    c = _started(tmp_path)
    assert c.stop() == 0
    code, text, report = doctor(c)
    got = checks(report)
    assert code == 0 and report["mode"] == "offline", text
    assert got["clock"]["status"] == "skip" and got["external_url"]["status"] == "skip"
    assert got["audit"]["status"] == "ok" and got["secret_key"]["status"] == "ok"
    assert text.startswith(f"checked {c.data_dir} (no controller running: the files)")

    crt, key = _short_cert(tmp_path, 5)
    env = {"OVERCAST_TLS": "on", "OVERCAST_TLS_CERT": str(crt), "OVERCAST_TLS_KEY": str(key),
           "OVERCAST_EXTERNAL_URL": f"https://127.0.0.1:{c.http_port}"}
    code, text, report = doctor(c, env)
    tls = checks(report)["tls_cert"]
    assert code == 0 and tls["status"] == "warn" and "(5 days)" in tls["message"], text
    assert "the controller does not renew a certificate it was given" in tls["fix"]
    assert text.rstrip().endswith("no failures; 1 warning (exit 0)")

    store = open_store(c.data_dir / "store")
    raw = json.loads(store.get(entry_key(1)) or b"")
    store.put(entry_key(1), json.dumps(dict(raw, action="something.else")).encode())
    store.close()
    code, text, report = doctor(c)
    audit = checks(report)["audit"]
    assert code == 1 and audit["status"] == "fail" and "breaks at entry 1" in audit["message"]
    assert "fail  audit" in text

    r = c.cli("doctor", env={"OVERCAST_TLS": "maybe"})
    assert r.returncode == 1 and "fail  settings" in r.stdout and "tls must be" in r.stdout
    r = c.cli("doctor", "--data-dir", str(tmp_path / "nothing"))
    assert r.returncode == 1 and "no store in" in r.stdout
