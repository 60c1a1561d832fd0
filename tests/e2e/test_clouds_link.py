"""One host, one machine: a server known through a cloud (here bare metal over SSH) that also
runs the Overcast agent appears once, with the cloud's facts and the agent's state together;
the agent keeps reporting into it; removing the cloud gives the agent its own machine back."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.support import sshd as sshd_support
from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.clouds import audit, poll
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, free_port
from tests.support.netns import Lab

why = sshd_support.available()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


@dataclass
class World:
    c: Controller
    h: Http
    sshd: sshd_support.Sshd
    agent: AgentProc
    key: str

    def all_machines(self) -> dict[str, dict[str, Any]]:
        r = self.h.get("/api/v2/machines?limit=1000")
        assert r.status == 200, r.body
        return {m["id"]: m for m in r.body["data"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("link")
    key = asyncssh.generate_private_key("ssh-ed25519")
    with Lab(subnet=random.randint(150, 199)) as lab:
        host = lab.add_host()
        port = free_port()
        c = Controller(tmp, {"OVERCAST_HTTP": f"{lab.gateway}:{port}",
                             "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
                             "OVERCAST_AGENT_GRACE": "5"},
                       url=f"https://{lab.gateway}:{port}")
        c.http_port = port
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Link")
        c.start()
        sshd = sshd_support.Sshd(host, tmp / "sshd", hostname="oclinked")
        sshd.authorize(key.export_public_key().decode())
        agent = AgentProc(c, tmp / "agent", host=host, hostname="oclinked", interval=1.0)
        try:
            with sshd:
                yield World(c, c.session(), sshd, agent, key.export_private_key().decode())
        finally:
            agent.stop()
            if c.proc is not None and c.proc.poll() is None:
                c.stop()


def test_a_cloud_host_running_an_agent_is_one_machine(world: World) -> None:
    h, agent = world.h, world.agent
    r = agent.enrol(join_token(h)["token"])
    assert r.returncode == 0, r.stderr
    agent.start()
    aid = agent.agent_id
    wait_for(lambda: world.all_machines().get(aid, {}).get("state") == "running", 30, "agent running")
    r = h.post("/api/v2/clouds", {"name": "Rack", "provider": "other", "credentials": {
        "hosts": [{"host": world.sshd.host.address, "alias": "linked", "key": world.key}]}})
    assert r.status == 201, r.body
    cid = r.body["data"]["id"]
    poll(h, cid)
    ms = world.all_machines()
    assert aid not in ms, "the agent's own machine should have merged into the cloud's"
    [m] = [m for m in ms.values() if m["cloud"] == cid]
    assert m["agent"] == aid and m["monitoring"]["enabled"] is True and m["agent_state"] == "connected"
    assert m["state"] == "running" and m["hostname"] == "oclinked"
    assert m["agent_facts"]["cores"] >= 1
    assert h.get(f"/api/v2/agents/{aid}").body["data"]["machine"] == m["id"]
    [entry] = audit(h, "machine.link", m["id"])
    assert entry["details"]["agent"] == aid and entry["details"]["matched_by"] == "mac"
    # the agent goes away: the cloud machine says so, its power state stays the cloud's
    agent.stop()

    def agent_gone() -> bool:
        cur = world.all_machines().get(m["id"], {})
        return cur.get("agent_state") == "unreachable"

    wait_for(agent_gone, 30, "agent_state unreachable")
    assert world.all_machines()[m["id"]]["state"] == "running"
    assert aid not in world.all_machines()
    # removing the cloud hands the agent its own machine back
    assert h.delete(f"/api/v2/clouds/{cid}").status == 200
    ms = world.all_machines()
    assert m["id"] not in ms and ms[aid]["hostname"] == "oclinked"
    agent.start()
    wait_for(lambda: world.all_machines().get(aid, {}).get("state") == "running", 30,
             "agent back on its own machine")
