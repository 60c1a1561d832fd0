"""The doctor's checks one by one: thresholds, certificates near or past expiry or naming
the wrong host, a broken audit chain, the wrong secret key, and agents' clock offsets."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections import namedtuple
from pathlib import Path

from cryptography import x509

from controller.agents.registry import Registry, Session
from controller.clouds.model import cloud_key
from controller.ops import doctor
from controller.pki import ensure_pki
from controller.secrets import SecretBox, load_key
from controller.settings import Settings
from controller.store import open_store

Usage = namedtuple("Usage", "total used free")
GiB = 2**30


def test_disk_thresholds(tmp_path: Path) -> None:
    def at(free: int, total: int = 100 * GiB) -> str:
        return doctor.check_disk(str(tmp_path), lambda _: Usage(total, total - free, free)).status

    assert at(50 * GiB) == "ok"
    assert at(5 * GiB) == "warn"  # 5 %
    assert at(int(1.5 * GiB), 10 * GiB) == "warn"  # 15 %, but under 2 GiB
    assert at(100 * 2**20) == "fail"
    assert at(1 * GiB, 1000 * GiB) == "fail"  # 0.1 %
    c = doctor.check_disk(str(tmp_path), lambda _: Usage(100 * GiB, 99 * GiB, 1 * GiB))
    assert "1.0 GiB free (1 %)" in c.message and "metric_retention" in c.fix


def _certs(tmp_path: Path) -> tuple[Settings, x509.Certificate]:
    s = Settings(data_dir=str(tmp_path), http="0.0.0.0:7080", tls="on",
                 external_url="https://ctl.example.com:7080")
    ensure_pki(s.data_dir, ["ctl.example.com"])
    cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "server.crt").read_bytes())
    return s, cert


def test_server_certificate_expiry_and_names(tmp_path: Path) -> None:
    s, cert = _certs(tmp_path)
    end = cert.not_valid_after_utc
    assert doctor.check_server_cert(s).status == "ok"
    soon = doctor.check_server_cert(s, end - dt.timedelta(days=10))
    assert soon.status == "warn" and "(10 days)" in soon.message and "restart" in soon.fix
    gone = doctor.check_server_cert(s, end + dt.timedelta(days=1))
    assert gone.status == "fail" and "expired on" in gone.message
    other = Settings(data_dir=s.data_dir, http="0.0.0.0:7080", tls="on",
                     external_url="https://other.example.net:7080")
    wrong = doctor.check_server_cert(other)
    assert wrong.status == "fail" and "does not name other.example.net" in wrong.message
    # behind a proxy the proxy's certificate is the one users see: not this one's business
    proxied = Settings(data_dir=s.data_dir, http="0.0.0.0:7080", tls="on", behind_proxy=True,
                       external_url="https://other.example.net")
    assert doctor.check_server_cert(proxied).status == "ok"


def test_a_given_certificate_that_does_not_match_its_key(tmp_path: Path) -> None:
    s, _ = _certs(tmp_path)
    ensure_pki(str(tmp_path / "b"), ["ctl.example.com"])
    mixed = Settings(data_dir=s.data_dir, http="0.0.0.0:7080", tls="on",
                     external_url="https://ctl.example.com:7080",
                     tls_cert=str(tmp_path / "pki" / "server.crt"),
                     tls_key=str(tmp_path / "b" / "pki" / "server.key"))
    c = doctor.check_server_cert(mixed)
    assert c.status == "fail" and "do not load together" in c.message


def test_ca_expiry(tmp_path: Path) -> None:
    _certs(tmp_path)
    ca = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.crt").read_bytes())
    end = ca.not_valid_after_utc
    assert doctor.check_ca(str(tmp_path)).status == "ok"
    assert doctor.check_ca(str(tmp_path), end - dt.timedelta(days=30)).status == "warn"
    c = doctor.check_ca(str(tmp_path), end + dt.timedelta(seconds=1))
    assert c.status == "fail" and "agents can neither connect nor renew" in c.message
    assert doctor.check_ca(str(tmp_path / "none")).status == "warn"


def test_clock_offsets() -> None:
    names = {"a1": "web-1", "a2": "db-1"}
    assert doctor.check_clock(None, {}).status == "skip"
    assert doctor.check_clock({}, {}).status == "ok"
    assert "none measured yet" in doctor.check_clock({"a1": None}, names).message
    assert doctor.check_clock({"a1": 0.3, "a2": -0.8}, names).status == "ok"
    c = doctor.check_clock({"a1": 0.3, "a2": -12.0}, names)
    assert c.status == "warn" and "-12.0 s (db-1)" in c.message and "NTP" in c.fix
    assert doctor.check_clock({"a1": 400.0}, names).status == "fail"


def test_clock_offset_from_metric_batches() -> None:
    s = Session("a1", "org", "127.0.0.1")
    now = 1_000_000.0
    # a spool of old batches arrives first, then live ones: the live ones decide
    s.note_clock(int((now - 3600) * 1000), now)
    assert s.clock_offset is not None and s.clock_offset < -3000
    s.note_clock(int((now + 2.0) * 1000), now + 0.05)  # the agent's clock is 2 s ahead
    s.note_clock(int((now + 2.5) * 1000), now + 0.6)  # this one spent longer in transit
    assert abs(s.clock_offset - 1.95) < 1e-6
    # a minute later a new measurement replaces the old one (the agent's clock was fixed)
    s.note_clock(int((now + 90) * 1000), now + 90.1)
    assert abs(s.clock_offset + 0.1) < 1e-6
    s.note_clock(0, now + 200)  # no time in the batch: nothing learnt
    r = Registry()
    r._sessions["a1"] = s
    assert r.clock_offsets() == {"a1": s.clock_offset}


def test_audit_chain_and_schema_of_a_store(tmp_path: Path) -> None:
    from controller.audit.chain import Chain
    from controller.store.base import Batch

    store = open_store(tmp_path / "store")
    chain = Chain(store)
    for i in range(3):
        b = Batch()
        _, head = chain.append(b, {"action": f"a{i}"})
        store.write(b)
        chain.advance(head)
    c = doctor.check_audit(store)
    assert c.status == "ok" and c.message.startswith("3 entries intact, head 3")
    entry = json.loads(store.get("audit/0000000000000002") or b"")
    store.put("audit/0000000000000002", json.dumps(dict(entry, action="edited")).encode())
    c = doctor.check_audit(store)
    assert c.status == "fail" and "breaks at entry 2" in c.message
    store.put("meta/schema/user", b"99")
    c = doctor.check_schema(store, online=False)
    assert c.status == "fail" and "user 99 > 1" in c.message
    store.close()


def test_the_secret_key_must_open_the_stored_credentials(tmp_path: Path) -> None:
    s = Settings(data_dir=str(tmp_path))
    store = open_store(tmp_path / "store")
    key = load_key(s.data_dir)
    os.chmod(tmp_path / "secret.key", 0o600)
    assert doctor.check_secret_key(s, store).status == "ok"
    sealed = SecretBox(key).seal("{}", aad=cloud_key("o1", "c1"))
    store.put(cloud_key("o1", "c1"), json.dumps({"id": "c1", "org": "o1", "_secrets": sealed}).encode())
    c = doctor.check_secret_key(s, store)
    assert c.status == "ok" and "opens the stored credentials" in c.message
    (tmp_path / "secret.key").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    c = doctor.check_secret_key(s, store)
    assert c.status == "fail" and "not the key they were sealed with" in c.message
    os.chmod(tmp_path / "secret.key", 0o644)
    assert doctor.check_secret_key(s, store).status == "warn"
    store.close()
