"""The controller's half of agent upgrades, over a real store with streams that answer like
agents: agents chosen by id, name and tag; Upgrade sent with the package's URL, version and
SHA-256; an agent that installs, answers and comes back with the new version is upgraded; one
whose answer is lost with its stream but comes back upgraded is too; one that fails says why
(audited with the installer's lines); one already current is left alone; one not connected
fails at once. The real agents' side: tests/e2e/test_agent_install.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from controller.accounts.model import Principal
from controller.agents.model import AGENT, agent_key, older
from controller.agents.registry import Session
from controller.agents.upgrade import Upgrades
from controller.errors import Forbidden, Invalid, NotFound
from controller.events.model import Actor
from controller.install.package import Package
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.services import Services
from controller.store.docs import dump
from overcast.agent.v1 import agent_pb2 as pb

ORG = "org1"
PKG = Package("overcast_agent-0.2.0-py3-none-any.whl", "0.2.0", b"wheel", "cd" * 32)
OWNER = Principal({"id": "u1", "email": "o@example.com"}, {"id": ORG}, "owner", "token", "t1")
ACTOR = Actor(kind="user", id="u1", via="rest", org=ORG)


def add_agent(s: Services, aid: str, name: str, version: str, tags: dict[str, str]) -> None:
    s.store.put(agent_key(ORG, aid), dump(AGENT, {"id": aid, "org": ORG, "name": name,
                                                  "version": version, "tags": {},
                                                  "protocol_version": 1, "revoked": False}))
    s.store.put(f"agentid/{aid}", ORG.encode())
    s.store.put(machine_key(ORG, aid), dump(MACHINE, {"id": aid, "org": ORG, "name": name,
                                                      "tags": tags, "agent": aid}))


class Agent:
    """A connected agent's stream; ``behaviour`` decides what it does with Upgrade."""

    def __init__(self, s: Services, aid: str, behaviour: str) -> None:
        self.s, self.aid, self.behaviour = s, aid, behaviour
        self.got: list[pb.Upgrade] = []
        self.connect()

    def connect(self) -> None:
        session = Session(self.aid, ORG, "127.0.0.1")
        session.context = self
        self.s.registry.add(session)

    async def write(self, msg: pb.ControllerMessage) -> None:
        if msg.WhichOneof("body") == "upgrade":
            self.got.append(msg.upgrade)
            asyncio.get_running_loop().create_task(self.act(msg.upgrade))

    async def act(self, up: pb.Upgrade) -> None:
        await asyncio.sleep(0.05)
        if self.behaviour == "fails":
            await self.answer(up, False, "pip could not install it", "ERROR: no wheel for grpcio")
            return
        if self.behaviour == "answers":
            await self.answer(up, True)
        # restarted into the new code: a new stream, the new version in its hello
        doc = self.s.store.get(agent_key(ORG, self.aid))
        assert doc is not None
        self.s.store.put(agent_key(ORG, self.aid),
                         dump(AGENT, dict(json.loads(doc), version=up.version)))
        self.connect()

    async def answer(self, up: pb.Upgrade, ok: bool, error: str = "", output: str = "") -> None:
        await self.s.agentlink.deliver(self.aid, pb.AgentMessage(upgrade_result=pb.UpgradeResult(
            request_id=up.request_id, ok=ok, error=error, output=output, version=up.version)))


async def run(s: Services, refs: list[str], force: bool = False,
              wheels: int = 3) -> dict[str, Any]:
    up = Upgrades(s.agents, s.agentlink, s.registry, s.jobs, s.writer)
    job = up.start(OWNER, ACTOR, refs, force, PKG, wheels)
    await s.jobs.wait_all()
    return s.jobs.get(OWNER, job["id"])


async def test_each_agent_is_upgraded_or_says_why(services: Services) -> None:
    s = services
    add_agent(s, "a1", "web1", "0.1.0", {"env": "prod"})
    add_agent(s, "a2", "web2", "0.1.0", {"env": "prod"})
    add_agent(s, "a3", "db1", "0.1.0", {"env": "prod"})
    add_agent(s, "a4", "new1", "0.2.0", {"env": "prod"})
    add_agent(s, "a5", "gone1", "0.1.0", {"env": "prod"})
    agents = {"a1": Agent(s, "a1", "answers"), "a2": Agent(s, "a2", "lost"),
              "a3": Agent(s, "a3", "fails"), "a4": Agent(s, "a4", "answers")}
    job = await run(s, ["tag:env=prod"])
    assert job["status"] == "failed" and "2 of 5" in job["error"]["message"]
    by = {a["id"]: a for a in job["result"]["agents"]}
    assert {k: v["status"] for k, v in by.items()} == {
        "a1": "upgraded", "a2": "upgraded", "a3": "failed", "a4": "current", "a5": "failed"}
    assert by["a3"]["error"] == "pip could not install it" and "no wheel" in by["a3"]["output"]
    assert by["a5"]["error"] == "the agent is not connected"
    [up] = agents["a1"].got
    assert (up.package_url, up.version, up.sha256, up.find_links) == (
        "/install/packages/" + PKG.filename, "0.2.0", PKG.sha256, "/install/wheels/")
    assert not agents["a4"].got
    assert s.agents.get(OWNER, "a1")["version"] == "0.2.0"
    assert s.agents.get(OWNER, "a1")["outdated"] is False  # newer than this controller's own
    entries, _ = s.audit.entries(OWNER, _query(), action="agent.upgrade")
    phases = sorted((e["target"]["id"], e["details"]["phase"], e["outcome"]) for e in entries)
    assert phases == [("a1", "requested", "success"), ("a1", "succeeded", "success"),
                      ("a2", "requested", "success"), ("a2", "succeeded", "success"),
                      ("a3", "failed", "failed"), ("a3", "requested", "success"),
                      ("a5", "failed", "failed")]
    progress = [p["message"] for p in job["progress"]]
    assert "web1: installing 0.2.0 (running 0.1.0)" in progress and "web1: upgraded to 0.2.0" in progress


async def test_selection_and_permissions(services: Services) -> None:
    s = services
    add_agent(s, "a1", "web1", "0.1.0", {})
    add_agent(s, "a2", "web1", "0.1.0", {})
    a1 = Agent(s, "a1", "answers")
    job = await run(s, ["a1"], wheels=0)  # by id; no wheels served: no find-links sent
    assert job["status"] == "succeeded", job
    assert a1.got[0].find_links == ""
    assert job["result"]["summary"] == {"agents": 1, "failed": 0, "upgraded": 1, "current": 0}
    job = await run(s, ["a1"])  # current now
    assert job["result"]["agents"][0]["status"] == "current"
    job = await run(s, ["a1"], force=True)  # force: installed again
    assert job["result"]["agents"][0]["status"] == "upgraded"
    up = Upgrades(s.agents, s.agentlink, s.registry, s.jobs, s.writer)
    with pytest.raises(Invalid, match="2 agents are named 'web1'"):
        up.select(OWNER, ["web1"])
    with pytest.raises(NotFound):
        up.select(OWNER, ["nobody"])
    with pytest.raises(Invalid, match="no agent has the tag"):
        up.select(OWNER, ["tag:env=none"])
    member = Principal(OWNER.user, OWNER.org, "member", "token", "t2")
    with pytest.raises(Forbidden):
        up.start(member, ACTOR, ["a1"], False, PKG, 0)


def test_versions_compare_by_their_numbers() -> None:
    assert older("0.1.9", "0.1.10") and older("0.0.1", "0.1.0")
    assert not older("0.1.0", "0.1.0") and not older("0.2.0", "0.1.9") and not older("", "0.1.0")


def _query() -> Any:
    from controller.listing import parse_query

    return parse_query({})

