"""The agent's state directory: enrolment, key and certificates."""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import state as state_mod
from agent.state import AgentState, default_state_dir, make_key_and_csr, write_atomic

ROOT = Path(__file__).resolve().parents[2]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _cert_for(key_pem: bytes, cn: str, days: int = 30) -> tuple[bytes, bytes, dt.datetime]:
    """A certificate for key_pem signed by a throwaway CA: (cert PEM, CA PEM, not_after)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(days=days)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(not_after).sign(ca_key, hashes.SHA256()))
    key = serialization.load_pem_private_key(key_pem, None)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)  # type: ignore[arg-type]
            .not_valid_before(now).not_valid_after(not_after).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem), ca.public_bytes(pem), not_after


def _enrolled(tmp_path: Path) -> AgentState:
    st = AgentState(tmp_path / "state")
    key_pem, _ = make_key_and_csr("web1")
    cert_pem, ca_pem, _ = _cert_for(key_pem, "agt_123")
    st.install_credentials(key_pem, cert_pem, ca_pem)
    st.agent_id, st.org = "agt_123", "org_1"
    st.controller_url, st.grpc_endpoint, st.ca_fingerprint = "https://ctl:8443", "ctl:8444", "ab" * 32
    st.save()
    return st


def test_new_state_directory_is_private_and_not_enrolled(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    st = AgentState(d)
    assert _mode(d) == 0o700 and not st.enrolled
    assert st.agent_id == "" and st.cert_not_after() is None and st.cert_common_name() is None
    assert st.spool_dir == d / "spool"
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    AgentState(loose)
    assert _mode(loose) == 0o700


def test_enrolment_saved_private_and_reloaded(tmp_path: Path) -> None:
    st = _enrolled(tmp_path)
    assert st.enrolled
    d = st.directory
    for name in ("key.pem", "cert.pem", "ca.pem", "agent.json"):
        assert _mode(d / name) == 0o600, name
    assert sorted(p.name for p in d.iterdir()) == ["agent.json", "ca.pem", "cert.pem", "key.pem"]
    assert json.loads((d / "agent.json").read_text()) == {
        "agent_id": "agt_123", "org": "org_1", "controller_url": "https://ctl:8443",
        "grpc_endpoint": "ctl:8444", "ca_fingerprint": "ab" * 32,
    }
    again = AgentState(d)
    assert again.enrolled
    assert (again.agent_id, again.org, again.controller_url, again.grpc_endpoint, again.ca_fingerprint) == (
        "agt_123", "org_1", "https://ctl:8443", "ctl:8444", "ab" * 32)
    assert again.cert_common_name() == "agt_123"
    na = again.cert_not_after()
    assert na is not None and na.tzinfo is not None
    assert dt.timedelta(days=29) < na - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
    (d / "cert.pem").unlink()
    assert not AgentState(d).enrolled  # an id without its certificate proves nothing


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = _enrolled(tmp_path)
    before = (st.directory / "agent.json").read_bytes()
    st.agent_id = "agt_other"

    def no_disk(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(state_mod.os, "fsync", no_disk)
    with pytest.raises(OSError):
        st.save()
    monkeypatch.undo()
    assert (st.directory / "agent.json").read_bytes() == before  # all or nothing
    assert sorted(p.name for p in st.directory.iterdir()) == ["agent.json", "ca.pem", "cert.pem", "key.pem"]
    st.save()
    assert AgentState(st.directory).agent_id == "agt_other"


def test_write_atomic_never_widens_a_leftover(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    leftover = tmp_path / ".key.pem.tmp"
    leftover.write_bytes(b"old")
    os.chmod(leftover, 0o644)
    write_atomic(target, b"secret")
    assert target.read_bytes() == b"secret" and _mode(target) == 0o600 and not leftover.exists()


def test_csr_has_the_name_and_the_key_is_p256(tmp_path: Path) -> None:
    key_pem, csr_pem = make_key_and_csr("web1.example.com")
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web1.example.com"
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert csr.public_key().public_bytes(*pub) == key.public_key().public_bytes(*pub)
    assert b"PRIVATE KEY" not in csr_pem
    other, _ = make_key_and_csr("web1.example.com")
    assert other != key_pem  # a new key each time
    long_cn = x509.load_pem_x509_csr(make_key_and_csr("h" * 200)[1])
    assert len(long_cn.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value) == 64


def test_interrupted_credential_install_rolls_forward(tmp_path: Path) -> None:
    st = _enrolled(tmp_path)
    d = st.directory
    new_key, _ = make_key_and_csr("web1")
    new_cert, _, _ = _cert_for(new_key, "agt_123")
    # staged pair, the key renamed, crash before the certificate: load completes it
    write_atomic(d / "cert.pem.new", new_cert)
    write_atomic(d / "key.pem", new_key)
    again = AgentState(d)
    assert (d / "key.pem").read_bytes() == new_key and (d / "cert.pem").read_bytes() == new_cert
    assert not (d / "cert.pem.new").exists() and again.enrolled
    # only the key staged: the certificate never came, the old pair stands
    write_atomic(d / "key.pem.new", b"half a renewal")
    AgentState(d)
    assert not (d / "key.pem.new").exists() and (d / "key.pem").read_bytes() == new_key


def test_install_credentials_replaces_the_pair(tmp_path: Path) -> None:
    st = _enrolled(tmp_path)
    ca_before = st.ca_pem()
    key, _ = make_key_and_csr("web1")
    cert, _, _ = _cert_for(key, "agt_123", days=90)
    st.install_credentials(key, cert)
    assert st.key_pem() == key and st.cert_pem() == cert and st.ca_pem() == ca_before
    assert _mode(st.key_path) == 0o600 and _mode(st.cert_path) == 0o600
    assert not list(st.directory.glob("*.new")) and not list(st.directory.glob(".*.tmp"))


def test_unreadable_agent_json_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "s"
    AgentState(d)
    (d / "agent.json").write_text("{not json")
    with pytest.raises(ValueError, match="agent.json"):
        AgentState(d)
    (d / "agent.json").write_text("[1, 2]")
    with pytest.raises(ValueError):
        AgentState(d)


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(state_mod.os, "geteuid", lambda: 0)
    assert default_state_dir() == Path("/var/lib/overcast-agent")
    monkeypatch.setattr(state_mod.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "overcast-agent"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for bad in ("", "relative/dir"):
        monkeypatch.setenv("XDG_STATE_HOME", bad)
        assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "overcast-agent"


def test_agent_modules_import_only_light_dependencies() -> None:
    """Module level: the standard library, psutil, grpc, protobuf, our own; cryptography only
    inside functions (it is loaded when a key is made or a certificate read)."""
    allowed = set(sys.stdlib_module_names) | {"psutil", "grpc", "google", "overcast", "agent", "__future__"}
    for f in (ROOT / "agent").rglob("*.py"):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.Import):
                top = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = {node.module.split(".")[0]}
            else:
                continue
            assert top <= allowed, f"{f.relative_to(ROOT)} imports {top - allowed} at load time"
    code = ("import sys, agent.state, agent.spool, agent.collect.metrics, agent.collect.inventory;"
            "print('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"})
    assert out.stdout.strip() == "False"


def _cert_between(not_before: dt.datetime, not_after: dt.datetime, serial: int = 2) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n" * 64)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial).not_valid_before(not_before)
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(("not_before", "not_after"), [
    (dt.datetime(2026, 11, 26, 2, 3, 4, tzinfo=dt.UTC), dt.datetime(2026, 12, 3, 2, 3, 4, tzinfo=dt.UTC)),
    # UTCTime's two-digit years end with 2049; GeneralizedTime from 2050
    (dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC), dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
    (dt.datetime(2049, 1, 1, tzinfo=dt.UTC), dt.datetime(2051, 6, 7, 8, 9, 10, tzinfo=dt.UTC)),
])
def test_certificate_dates_are_read_without_openssl(not_before: dt.datetime, not_after: dt.datetime) -> None:
    pem = _cert_between(not_before, not_after, serial=2**150)  # a long serial: long lengths
    assert state_mod.pem_validity(pem) == (not_before, not_after)
    assert state_mod.pem_validity(b"junk before\n" + pem + pem) == (not_before, not_after)


def test_unreadable_certificates_have_no_dates(tmp_path: Path) -> None:
    for bad in (b"", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n"):
        with pytest.raises(ValueError):
            state_mod.pem_validity(bad)
    st = _enrolled(tmp_path)
    write_atomic(st.cert_path, b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n")
    assert st.cert_validity() == (None, None) and st.cert_not_after() is None
    st.cert_path.unlink()
    assert st.cert_validity() == (None, None)


def test_a_renewal_key_is_made_in_a_child_process() -> None:
    key_pem, csr_pem = state_mod.make_key_and_csr_isolated("web1")
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    key = serialization.load_pem_private_key(key_pem, None)
    pub = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert csr.public_key().public_bytes(*pub) == key.public_key().public_bytes(*pub)
