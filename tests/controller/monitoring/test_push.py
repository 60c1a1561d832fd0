"""Keeping the agents' metric sources current: an agent gets its list in its Welcome and then
again only when it changes (a source added or deleted, its machine's tags changed), never
before its Welcome; an organisation's changes never reach another's agents; and following
the events does not make every organisation look watched (the pollers would speed up)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from controller.accounts.model import Principal
from controller.agents.registry import Registry, Session
from controller.events.bus import EventBus
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.exec.agentlink import AgentLink
from controller.listing import parse_query
from controller.monitoring.push import SourcePush
from controller.monitoring.sources import SourceService
from controller.scripts.service import ScriptService
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store import open_store
from overcast.agent.v1 import agent_pb2 as pb

ORG, OTHER = "o1", "o2"
P = Principal({"id": "u1", "email": "a@example.com"}, {"id": ORG, "name": "A"}, "owner", "token", "t")
ACTOR = Actor(kind="user", id="u1", org=ORG)


class Link(AgentLink):
    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self.sent: list[tuple[str, pb.ControllerMessage]] = []

    async def write(self, agent_id: str, msg: pb.ControllerMessage) -> None:
        self.sent.append((agent_id, msg))


def test_sources_follow_changes_to_the_agents_that_have_them(tmp_path: Path) -> None:
    async def main() -> None:
        store = open_store(tmp_path / "db")
        bus = EventBus()
        bus.bind(asyncio.get_running_loop())
        writer = Writer(store, bus)
        settings = Settings(data_dir=str(tmp_path))
        scripts = ScriptService(settings, store, writer, SecretBox(b"k" * 32))
        await scripts.add(P, ACTOR, {"name": "s", "location_type": "inline",
                                     "script": "#!/bin/sh\necho m 1\n", "exec_type": "executable"})
        sources = SourceService(store, writer, scripts)
        registry = Registry()
        link = Link(registry)
        push = SourcePush(settings, sources, registry, link, bus)
        agents: dict[str, dict[str, Any]] = {}
        for aid, org in (("a1", ORG), ("a2", ORG), ("b1", OTHER)):
            doc = {"id": aid, "org": org}
            store.put(f"agent/{org}/{aid}", json.dumps(doc).encode())
            store.put(f"agentid/{aid}", org.encode())
            store.put(f"machine/{org}/{aid}", json.dumps(
                {"id": aid, "agent": aid, "monitoring": True, "tags": {}}).encode())
            registry.add(Session(aid, org, "127.0.0.1"))
            agents[aid] = doc
        task = asyncio.get_running_loop().create_task(push.run())
        await asyncio.sleep(0.05)
        assert not bus.watching(ORG)  # the follower does not count as someone watching
        for aid in ("a1", "b1"):  # a2 is connected but has had no Welcome yet
            assert push.welcome(agents[aid]) == []
        sources.create(P, ACTOR, {"name": "q", "script": "s",
                                  "selectors": [{"type": "tags", "include": ["role=q"]}]})
        await asyncio.sleep(0.5)
        assert link.sent == []  # nobody has the tag: nothing changed for anyone
        # a1's machine gains the tag (the way the tags route writes it)
        raw = store.get(f"machine/{ORG}/a1")
        assert raw is not None
        c = Change("machine.tag", org=ORG, target_kind="machine", target_id="a1")
        c.put(f"machine/{ORG}/a1", json.dumps(dict(json.loads(raw), tags={"role": "q"})).encode())
        c.event("changed", "machine", "a1", {"tags": {"role": "q"}})
        writer.commit(ACTOR, c)
        await asyncio.sleep(0.5)
        assert [(a, [s.name for s in m.config.metric_sources]) for a, m in link.sent] == [("a1", ["q"])]
        assert link.sent[0][1].config.metric_interval_s == settings.metric_interval
        # the same list again: nothing sent; the source deleted: a1 gets an empty list
        await push.flush()
        assert len(link.sent) == 1
        [doc] = sources.list_sources(P, parse_query({}))[0]
        sources.delete(P, ACTOR, doc["id"])
        await asyncio.sleep(0.5)
        assert [(a, len(m.config.metric_sources)) for a, m in link.sent[1:]] == [("a1", 0)]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()

    asyncio.run(main())
