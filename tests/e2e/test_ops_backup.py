"""``overcast backup`` of a running controller (through its admin socket, while requests
keep writing) and ``overcast restore`` into a new data directory: a controller started on
it has the same users, passwords, tokens, agents, clouds (their credentials still open),
CA and audit chain. Plus the refusals a user meets: a damaged backup, a data directory
with data, a running controller, and an offline backup."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http
from tests.support.fake_digitalocean import FakeServer, start_fake_digitalocean

USERS = [("alice@example.com", "alice password 1", "Acme"), ("bob@example.com", "bob password 1", "")]


@pytest.fixture
def do_api() -> Iterator[FakeServer]:
    s = start_fake_digitalocean()
    yield s
    s.stop()


def _controller(tmp: Path) -> Controller:
    tmp.mkdir(parents=True, exist_ok=True)
    return Controller(tmp)


class TokenWriter:
    """Creates API tokens as fast as it can until stopped: writes (and audit entries) going
    on while the backup is taken. Keeps the ids the controller acknowledged, and when."""

    def __init__(self, h: Http) -> None:
        self.h = h
        self.made: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            r = self.h.post("/api/v2/auth/tokens", {"name": f"busy {i}", "ttl": 3600})
            if r.status != 201:
                return
            self.made.append((time.monotonic(), r.body["id"]))

    def __enter__(self) -> TokenWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def _populate(c: Controller, do: FakeServer, tmp: Path) -> dict[str, Any]:
    for email, password, org in USERS:
        c.adduser(email, password, *(["--org", org] if org else []))
    h = c.session()
    token = c.token(name="survives the restore")
    agent = AgentProc(c, tmp / "agent", hostname="backup-host")
    enrolled = agent.enrol(join_token(h)["token"])
    assert enrolled.returncode == 0, enrolled.stderr
    agent.start()
    wait_for(lambda: any(a["connected"] for a in h.get("/api/v2/agents").body["data"]), 30,
             "the agent to connect")
    r = h.post("/api/v2/clouds", {"name": "DO", "provider": "digitalocean",
                                  "credentials": {"token": do.token, "endpoint": do.url}})
    assert r.status == 201, r.body
    return {"h": h, "token": token, "agent": agent, "cloud": r.body["data"]["id"]}


def _entry(h: Http, seq: int) -> dict[str, Any]:
    r = h.get(f"/api/v2/logs?allorgs=true&after={seq - 1}&limit=1")
    assert r.status == 200, r.body
    entry: dict[str, Any] = r.body["data"][0]
    assert entry["seq"] == seq
    return entry


def test_online_backup_restores_on_a_new_data_directory(tmp_path: Path, do_api: FakeServer) -> None:
    a = _controller(tmp_path / "a")
    a.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    a.start()
    made = _populate(a, do_api, tmp_path / "a")
    bk = tmp_path / "backups" / "one"
    try:
        with TokenWriter(a.session()) as busy:
            time.sleep(0.5)
            started = time.monotonic()
            r = a.cli("backup", str(bk), "--json")
            wall = time.monotonic() - started
            time.sleep(0.3)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["online"] is True and out["dir"] == str(bk)
        acknowledged = [tid for t, tid in busy.made if t < started]
        assert acknowledged and len(busy.made) > len(acknowledged)  # writes went on meanwhile
        print(f"\nbackup of the test store: {out['bytes']} bytes in {out['files']} files, "
              f"{out['seconds']:.3f} s inside the controller, {wall:.2f} s for the command")
        manifest = json.loads((bk / "manifest.json").read_text())
        head = manifest["audit_head"]
        assert _entry(made["h"], head["seq"])["hash"] == head["hash"]
        assert manifest["counts"]["user"] == 3 and manifest["counts"]["agent"] == 1
        assert manifest["ca_fingerprint"] == a.ca_fingerprint
        for p in [bk, *bk.rglob("*")]:
            assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
        # the text form says where it went and how
        r = a.cli("backup", str(tmp_path / "backups" / "two"))
        assert r.returncode == 0 and "(through the running controller)" in r.stdout, r.stderr
        # a restore into the running controller's own data directory is refused
        r = a.cli("restore", str(bk), "--force")
        assert r.returncode == 1 and "a controller is running on" in r.stderr
    finally:
        made["agent"].stop()
        a.stop()

    b = _controller(tmp_path / "b")
    t0 = time.monotonic()
    r = b.cli("restore", str(bk), "--json")
    assert r.returncode == 0, r.stderr
    print(f"restore: {json.loads(r.stdout)['seconds']:.3f} s of work, "
          f"{time.monotonic() - t0:.2f} s for the command")
    assert json.loads(r.stdout)["data_dir"] == str(b.data_dir)
    r = b.cli("restore", str(bk))
    assert r.returncode == 1 and "is not empty" in r.stderr and "--force" in r.stderr
    b.start()
    try:
        assert b.ca_fingerprint == a.ca_fingerprint  # agents' pinned CA is the same
        for email, password in [(ADMIN_EMAIL, ADMIN_PASSWORD), *((e, p) for e, p, _ in USERS)]:
            assert b.session(email, password).get("/api/v2/auth").status == 200
        h = b.http(made["token"])
        assert h.get("/api/v2/auth").body["data"]["user"]["email"] == ADMIN_EMAIL
        tokens = {t["id"] for t in h.get("/api/v2/auth/tokens?limit=1000").body["data"]}
        assert set(acknowledged) <= tokens  # everything written before the backup is in it
        agents = h.get("/api/v2/agents").body["data"]
        assert [(x["id"], x["name"]) for x in agents] == [(made["agent"].agent_id, "backup-host")]
        clouds = {c["name"]: c for c in h.get("/api/v2/clouds").body["data"]}
        assert set(clouds) == {"Agents", "DO"}
        polled = h.post(f"/api/v2/clouds/{made['cloud']}/actions/poll")  # its sealed token opens
        assert polled.status == 200 and polled.body["data"]["state"] == "ok", polled.body
        r = b.cli("audit", "verify", "--json")
        assert r.returncode == 0, r.stderr
        verified = json.loads(r.stdout)
        assert verified["ok"] and verified["entries"] >= head["seq"]
        assert _entry(b.session(), head["seq"])["hash"] == head["hash"]  # the same chain
    finally:
        b.stop()


def test_damaged_backups_and_offline_backups(tmp_path: Path) -> None:
    a = _controller(tmp_path / "a")
    a.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    # no controller running: the CLI opens the store itself
    bk = tmp_path / "bk"
    r = a.cli("backup", str(bk))
    assert r.returncode == 0, r.stderr
    assert "(from the stopped controller's store)" in r.stdout
    assert json.loads((bk / "manifest.json").read_text())["online"] is False
    r = a.cli("restore", "--check", str(bk))
    assert r.returncode == 0 and "a complete backup" in r.stdout, r.stderr
    r = a.cli("backup", str(bk))  # not empty now
    assert r.returncode == 1 and "is not empty" in r.stderr
    r = a.cli("backup", str(a.data_dir / "inside"))
    assert r.returncode == 1 and "inside the data directory" in r.stderr
    key = bk / "secret.key"
    key.write_bytes(key.read_bytes()[:-2] + b"A\n")
    b = _controller(tmp_path / "b")
    r = b.cli("restore", str(bk))
    assert r.returncode == 1, r.stdout
    assert r.stderr.strip() == (f"overcast: the backup in {bk} is damaged: secret.key does not "
                                "match its checksum; nothing was restored")
    assert not b.data_dir.exists()
    (bk / "manifest.json").unlink()
    r = b.cli("restore", str(bk))
    assert r.returncode == 1 and "no manifest.json" in r.stderr
    r = b.cli("restore", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "is not a directory" in r.stderr
    r = b.cli("backup", str(tmp_path / "bk3"))
    assert r.returncode == 1 and "no Overcast data" in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "bk3")
