"""Enable and disable monitoring on an agentless machine, as a user does: an "other server"
machine (a real sshd in a network namespace whose only route is to the controller, no
systemd, no package index) gets the agent through `overcast monitoring enable` — the join
token's one-line install command run over SSH with the machine's key, the dependency wheels
from the controller (`overcast agent wheels fetch`), its output followed live — then the
agent enrols, is linked to that very machine (one machine, not two), and its samples are
stored; enabling again is refused. Disable uninstalls it over SSH (the install's directories
gone, the agent's process stopped) and revokes it. Bad input: a machine that cannot be
reached fails in the job in words and leaves nothing (no agent, no token); a machine without
a key is refused before any job starts; a member may not disable. Last, with the host's SSH
gone, disable uninstalls through the agent itself.

The namespaces share this machine's files and processes: the install's directories are under
a temporary one (the script's own options), and what the agent runs, runs here."""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.support import sshd as sshd_support
from tests.support.agents import wait_for
from tests.support.clouds import audit, poll, wait_job
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, ROOT, Controller, Http, free_port
from tests.support.fake_digitalocean import start_fake_digitalocean
from tests.support.netns import Lab

why = sshd_support.available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(why is not None, reason=why or "")]

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WHEELS = ROOT / "build" / "agent-wheels"  # a cache, shared with test_agent_install


@dataclass
class World:
    c: Controller
    h: Http
    tmp: Path
    lab: Lab
    root: Path              # the host's directories live under it
    machine: dict[str, Any]
    dead: dict[str, Any]    # a machine whose sshd has stopped: SSH is refused
    cli: Any
    sshd: sshd_support.Sshd

    def options(self) -> dict[str, Any]:
        return {"prefix": str(self.root / "opt" / "overcast-agent"),
                "config_dir": str(self.root / "etc" / "overcast"),
                "state_dir": str(self.root / "var" / "lib" / "overcast-agent")}

    def get(self, mid: str) -> dict[str, Any]:
        r = self.h.get(f"/api/v2/machines/{mid}")
        assert r.status == 200, r.body
        return r.body["data"]  # type: ignore[no-any-return]

    def machines(self) -> list[dict[str, Any]]:
        return self.h.get("/api/v2/machines?limit=1000").body["data"]  # type: ignore[no-any-return]


def tree(root: Path) -> list[str]:
    """Every path under ``root``; a directory that goes while it is walked (an uninstall
    running meanwhile) counts as not there yet: its entries are listed at the next look."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk skips what vanishes
        base = Path(dirpath)
        out += [str((base / n).relative_to(root)) for n in dirnames + filenames]
    return sorted(out)


def system_python_version() -> str:
    py = shutil.which("python3", path=SYSTEM_PATH)
    assert py, "python3 is not installed"
    out = subprocess.run([py, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{py} cannot make virtual environments: {out.stderr}"
    return out.stdout.strip()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("monitoring")
    key = asyncssh.generate_private_key("ssh-ed25519")
    with Lab(subnet=random.randint(100, 149)) as lab:
        host = lab.add_host()
        # a fresh host with no route anywhere but its own network (the controller's bridge)
        subprocess.run(["ip", "-n", host.name, "route", "del", "default"], check=True)
        port = free_port()
        c = Controller(tmp / "ctl", {"OVERCAST_HTTP": f"{lab.gateway}:{port}",
                                     "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
                                     "OVERCAST_AGENT_GRACE": "5",
                                     "OVERCAST_AGENT_WHEELS_DIR": str(WHEELS)},
                       url=f"https://{lab.gateway}:{port}")
        c.http_port = port
        r = c.cli("agent", "wheels", "fetch", "--dir", str(WHEELS), "--platform",
                  platform.machine(), "--python", system_python_version(), timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Watch")
        c.start()
        xdg = tmp / "xdg"

        def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
            return c.cli(*args, env={"XDG_CONFIG_HOME": str(xdg)}, timeout=600, input=input)

        r = cli("login", c.url, "--email", ADMIN_EMAIL, "--password-stdin", "--ca-fingerprint",
                c.ca_fingerprint, input=ADMIN_PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        sshd = sshd_support.Sshd(host, tmp / "sshd", hostname="ocwatch")
        sshd.authorize(key.export_public_key().decode())
        # a second host that goes away once its machine is known: its SSH then refuses
        dead = sshd_support.Sshd(lab.add_host(), tmp / "sshd-dead", hostname="ocdead")
        dead.authorize(key.export_public_key().decode())
        root = tmp / "host"
        root.mkdir()
        try:
            with sshd:
                h = c.session()
                with dead:
                    cloud = h.post("/api/v2/clouds", {"name": "Rack", "provider": "other",
                                                      "credentials": {"hosts": [
                        {"host": host.address, "alias": "watched",
                         "key": key.export_private_key().decode()},
                        {"host": dead.host.address, "alias": "deadbox",
                         "key": key.export_private_key().decode()}]}})
                    assert cloud.status == 201, cloud.body
                    poll(h, cloud.body["data"]["id"])
                ms = {m["name"]: m for m in h.get("/api/v2/machines?limit=100").body["data"]}
                yield World(c, h, tmp, lab, root, ms["watched"], ms["deadbox"], cli, sshd)
        finally:
            for p in root.rglob("agent.pid"):  # an agent a failed test left running
                try:
                    os.kill(int(p.read_text()), signal.SIGTERM)  # the install's shells then end
                except (OSError, ValueError):
                    pass
            if c.proc is not None and c.proc.poll() is None:
                c.stop()


def test_enable_installs_the_agent_over_ssh_and_it_is_the_same_machine(world: World) -> None:
    m = world.machine
    assert m["monitoring"] == {"enabled": False, "agent_id": "", "state": "disabled"}
    before = tree(world.root)
    o = world.options()
    t0 = time.time()
    r = world.cli("monitoring", "enable", "watched", "--prefix", o["prefix"], "--config-dir",
                  o["config_dir"], "--state-dir", o["state_dir"], "--interval", "1")
    seconds = round(time.time() - t0, 1)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    # the install's own output, live in the job: the controller's wheels, no package index
    assert "dependencies installed from the controller's wheels" in out, out
    assert "overcast monitoring: the agent runs" in out and "monitoring is on for watched" in out
    doc = world.get(m["id"])
    mon = doc["monitoring"]
    aid = mon["agent_id"]
    assert mon["enabled"] is True and mon["state"] == "connected" and aid, doc
    # one host, one machine: the agent reports into the "other server" machine
    assert [x["id"] for x in world.machines() if x["id"] in (aid, m["id"])] == [m["id"]]
    assert world.h.get(f"/api/v2/agents/{aid}").body["data"]["machine"] == m["id"]
    assert doc["agent_facts"]["hostname"] == "ocwatch"
    [link] = audit(world.h, "machine.link", m["id"])
    assert link["details"]["matched_by"] == "enable-monitoring"
    [done] = audit(world.h, "machine.enable_monitoring", m["id"])
    assert done["outcome"] == "success" and done["details"]["agent_id"] == aid
    # its samples arrive
    q = f'/api/v2/datapoints?query=system_load1{{machine_id="{aid}"}}'
    wait_for(lambda: world.h.get(q).body["data"]["data"]["result"], 60, "samples")
    # the job is the user's, with the install's output kept; the one-use token is gone
    jobs = world.h.get("/api/v2/jobs?limit=100").body["data"]
    [job] = [j for j in jobs if j["action"] == "machine.enable_monitoring"]
    assert job["status"] == "succeeded" and job["result"]["first_samples"] is True
    kept = world.h.get(f"/api/v2/jobs/{job['id']}/output").body["data"]
    assert kept[0]["machine"] == m["id"] and "installing" in "".join(c[1] for c in kept[0]["chunks"])
    assert world.h.get("/api/v2/agents/tokens").body["data"] == []
    assert tree(world.root) != before
    print(f"\nenable monitoring: {seconds} s to an agent connected with samples stored")


def test_enabling_it_again_is_refused(world: World) -> None:
    r = world.h.post(f"/api/v2/machines/{world.machine['id']}/actions/enable-monitoring", {})
    assert r.status == 409, r.body
    assert "monitoring is on already" in r.body["error"]["message"]
    assert r.body["error"]["details"]["state"] == "connected"
    r = world.cli("monitoring", "enable", world.machine["id"])
    assert r.returncode == 1 and "monitoring is on already" in r.stderr, r.stderr


def test_a_member_may_not_disable(world: World) -> None:
    world.c.adduser("member@example.com", "a member's long password", "--org", "Watch")
    member = world.c.session("member@example.com", "a member's long password")
    r = member.post(f"/api/v2/machines/{world.machine['id']}/actions/disable-monitoring", {})
    assert r.status == 403 and "only owners" in r.body["error"]["message"], r.body
    assert world.get(world.machine["id"])["monitoring"]["state"] == "connected"


def test_disable_uninstalls_and_revokes_the_agent(world: World) -> None:
    m = world.machine
    aid = world.get(m["id"])["monitoring"]["agent_id"]
    o = world.options()
    state = Path(o["state_dir"])
    assert (state / "agent.log").exists()
    r = world.cli("monitoring", "disable", "watched", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded" and job["result"]["uninstalled"] is True, job
    kept = world.h.get(f"/api/v2/jobs/{job['id']}/output").body["data"]
    text = "".join(c[1] for c in kept[0]["chunks"])
    assert "removed" in text, text
    a = world.h.get(f"/api/v2/agents/{aid}").body["data"]
    assert a["revoked"] is True and not a["connected"]
    doc = world.get(m["id"])
    assert doc["monitoring"] == {"enabled": False, "agent_id": "", "state": "disabled",
                                 "job": job["id"]}
    assert "agent" not in doc or not doc.get("agent")
    for d in ("prefix", "config_dir", "state_dir"):
        assert not Path(o[d]).exists(), d
    assert tree(world.root) == [], tree(world.root)  # as it was before the install
    wait_for(lambda: not any(b"-m\0agent\0" in c and str(world.root).encode() in c
                             for c in _cmdlines()), 20, "the agent stopped")
    assert [e["outcome"] for e in audit(world.h, "machine.disable_monitoring", m["id"])] == ["success"]
    # off already: said so
    r = world.h.post(f"/api/v2/machines/{m['id']}/actions/disable-monitoring", {})
    assert r.status == 409 and "monitoring is off" in r.body["error"]["message"], r.body


def _cmdlines() -> list[bytes]:
    """The command lines of the processes running now (one that ends meanwhile is left out:
    it was listed, then gone before its file was read)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            out.append((d / "cmdline").read_bytes())
        except OSError:
            continue
    return out


def test_an_unreachable_machine_fails_in_the_job_and_leaves_nothing(world: World) -> None:
    dead = world.dead
    agents_before = world.h.get("/api/v2/agents").body["data"]
    r = world.cli("monitoring", "enable", "deadbox")
    assert r.returncode == 255, r.stdout + r.stderr  # as ssh says it could not connect
    assert "connection refused" in r.stderr, r.stderr
    doc = world.get(dead["id"])
    assert doc["monitoring"]["state"] == "failed" and doc["monitoring"]["enabled"] is False
    assert "connection refused" in doc["monitoring"]["error"]
    assert world.h.get("/api/v2/agents").body["data"] == agents_before  # nobody enrolled
    assert world.h.get("/api/v2/agents/tokens").body["data"] == []      # nor can anybody
    [entry] = audit(world.h, "machine.enable_monitoring", dead["id"])
    assert entry["outcome"] == "failed" and "connection refused" in entry["details"]["error"]


def test_a_machine_without_a_key_is_refused_before_any_job(world: World) -> None:
    do = start_fake_digitalocean()
    try:
        h = world.h
        r = h.post("/api/v2/clouds", {"name": "DO", "provider": "digitalocean",
                                      "credentials": {"token": do.token, "endpoint": do.url}})
        assert r.status == 201, r.body
        cid = r.body["data"]["id"]
        poll(h, cid)
        r = h.post("/api/v2/machines", {"cloud": cid, "name": "nokey", "size": "s-1vcpu-1gb",
                                        "image": "ubuntu-22-04-x64", "location": "nyc3"})
        assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
        poll(h, cid)
        [m] = [x for x in world.machines() if x["name"] == "nokey"]
        jobs = len(h.get("/api/v2/jobs?limit=1000").body["data"])
        r = h.post(f"/api/v2/machines/{m['id']}/actions/enable-monitoring", {})
        assert r.status == 422, r.body
        assert "no key is associated" in r.body["error"]["message"]
        assert r.body["error"]["details"]["field"] == "machine"
        assert len(h.get("/api/v2/jobs?limit=1000").body["data"]) == jobs
        assert h.get("/api/v2/agents/tokens").body["data"] == []
        # bad options and unknown machines: JSON a client can act on
        r = h.post(f"/api/v2/machines/{m['id']}/actions/enable-monitoring",
                   {"prefix": "relative/path"})
        assert r.status == 422 and r.body["error"]["details"]["field"] in ("prefix", "machine")
        r = h.post("/api/v2/machines/nope/actions/enable-monitoring", {})
        assert r.status == 404 and r.body["error"]["code"] == "not_found"
    finally:
        do.stop()


def test_disable_goes_through_the_agent_when_ssh_fails(world: World) -> None:
    m = world.machine
    o = world.options()
    r = world.h.post(f"/api/v2/machines/{m['id']}/actions/enable-monitoring", dict(o, interval=1))
    assert r.status == 202, r.body
    job = wait_job(world.h, r.body["job_id"], 400)
    assert job["status"] == "succeeded", job
    aid = job["result"]["agent_id"]
    world.sshd.stop()  # the key no longer gets in; the agent is still connected
    r = world.h.post(f"/api/v2/machines/{m['id']}/actions/disable-monitoring", {})
    assert r.status == 202, r.body
    job = wait_job(world.h, r.body["job_id"], 200)
    assert job["status"] == "succeeded" and job["result"]["uninstalled"] is True, job
    assert job["result"]["targets"][0]["via"] == "agent"
    text = "".join(c[1] for o_ in world.h.get(f"/api/v2/jobs/{job['id']}/output").body["data"]
                   for c in o_["chunks"])
    assert "uninstalling through the agent instead" in text and "connection refused" in text
    assert world.h.get(f"/api/v2/agents/{aid}").body["data"]["revoked"] is True
    assert world.get(m["id"])["monitoring"]["enabled"] is False
    wait_for(lambda: tree(world.root) == [], 30, "the uninstall, on its own, to finish")
