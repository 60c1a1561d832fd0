"""Agents as tunnel gateways (controller.tunnels.gateways) over a real store, an in-memory
hub interface and an agent link whose streams record what goes down them: the agent named by
machine (404, 422 when not connected), its key registered, its error kept, a tunnel it no
longer has taken down, moves between agents and back to the script, rotation over the stream
in two steps (TunnelUp with rotate; the hub swaps the key when it arrives, then the agent is
told to switch), audited as the script's rotation, and TunnelUp sent again when it was lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from controller.agents.registry import Registry
from controller.errors import Invalid, NotFound, ProviderUnavailable
from controller.exec.agentlink import AgentLink
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.store.base import Store
from controller.store.docs import dump
from overcast.agent.v1 import agent_pb2 as pb
from tests.controller.tunnels.test_service import FakeInterface, P, audit, iface, service, store
from tunnel import keys

__all__ = ["iface", "store"]  # the fixtures, shared with test_service


class FakeLink(AgentLink):
    """The agent link with streams that only record what went down them (the messages are
    built, and the agents' answers converted, by the real AgentLink)."""

    def __init__(self, connected: set[str]) -> None:
        super().__init__(Registry())
        self.up = connected
        self.sent: list[tuple[str, Any]] = []
        self.broken: set[str] = set()  # connected, but their streams fail

    def connected(self, agent_id: str) -> bool:
        return agent_id in self.up

    async def write(self, agent_id: str, msg: Any) -> None:
        if agent_id not in self.up or agent_id in self.broken:
            raise RuntimeError("not connected")
        self.sent.append((agent_id, msg))


def agent_machine(store: Store, org: str, mid: str, name: str, agent: str = "") -> None:
    store.put(machine_key(org, mid), dump(MACHINE, {"id": mid, "name": name, "agent": agent,
                                                    "public_ips": [], "private_ips": []}))


async def test_an_agent_gateway_is_told_and_its_key_registered(store: Store, tmp_path: Path,
                                                               iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    link = FakeLink({"a1", "a2"})
    svc.attach_agents(cast(Any, link))
    assert "tunnel_status" in link.handlers
    agent_machine(store, "o1", "a1", "gw1", agent="a1")
    agent_machine(store, "o1", "a3", "gw3", agent="a3")  # not connected
    agent_machine(store, "o1", "m9", "plain")  # no agent
    agent_machine(store, "o2", "a2", "theirs", agent="a2")  # another organisation's
    for ref, err in (("plain", NotFound), ("a2", NotFound), ("nope", NotFound), ("gw3", Invalid)):
        with pytest.raises(err):
            await svc.create(P, P.actor(), {"name": "x", "cidrs": ["172.20.0.0/16"], "gateway_agent": ref})
    assert not list(store.scan("tunnel/"))
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"], "gateway_agent": "gw1"})
    assert "token" not in t and "install_command" not in t and t["gateway_machine"] == "a1"
    [(aid, msg)] = link.sent
    up = msg.tunnel_up
    assert aid == "a1" and up.tunnel_id == t["id"] and up.interface == f"oc-{t['id'][:8]}"
    assert up.address == "100.96.0.2/32" and up.hub_address == "100.96.0.1"
    assert up.hub_public_key == keys.public_of(iface.private_key) and list(up.cidrs) == ["172.20.0.0/16"]
    # the agent answers its key: registered, the hub gets the peer, audited with the agent
    gw = keys.public_of(keys.generate_private())
    await link.deliver("a1", pb.AgentMessage(tunnel_status=pb.TunnelStatus(
        tunnel_id=t["id"], public_key=gw)))
    assert svc.get(P, "dc1")["public_key"] == gw and gw in iface.peers_
    reg = audit(store, "tunnel.register")[-1]
    assert reg["details"]["agent"] == "a1" and reg["actor"]["kind"] == "agent"
    # an error is kept for the view
    await link.deliver("a1", pb.AgentMessage(tunnel_status=pb.TunnelStatus(
        tunnel_id=t["id"], error="the agent does not run as root")))
    assert "root" in svc.get(P, "dc1")["gateway_error"]
    # another agent claiming the tunnel, or a tunnel unknown: told to take it down
    link.sent.clear()
    await link.deliver("a2", pb.AgentMessage(tunnel_status=pb.TunnelStatus(
        tunnel_id=t["id"], public_key=keys.public_of(keys.generate_private()))))
    assert [(a, m.tunnel_down.tunnel_id) for a, m in link.sent] == [("a2", t["id"])]
    assert svc.get(P, "dc1")["public_key"] == gw
    # delete: the hub forgets the peer, the agent is told
    link.sent.clear()
    await svc.delete(P, P.actor(), "dc1", force=False)
    assert gw not in iface.peers_
    assert [(a, m.tunnel_down.tunnel_id) for a, m in link.sent] == [("a1", t["id"])]


async def test_edit_moves_the_tunnel_to_another_agent_or_back_to_the_script(
        store: Store, tmp_path: Path, iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    link = FakeLink({"a1", "a4"})
    svc.attach_agents(cast(Any, link))
    agent_machine(store, "o1", "a1", "gw1", agent="a1")
    agent_machine(store, "o1", "a4", "gw4", agent="a4")
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"]})
    gw = keys.public_of(keys.generate_private())
    await svc.register("1.2.3.4", t["token"], gw)
    e = await svc.edit(P, P.actor(), "dc1", {"gateway_agent": "gw1"})
    assert e["gateway_agent"] == "a1" and [m.WhichOneof("body") for _, m in link.sent] == ["tunnel_up"]
    link.sent.clear()
    await svc.edit(P, P.actor(), "dc1", {"gateway_agent": "a4"})
    assert [(a, m.WhichOneof("body")) for a, m in link.sent] == [("a1", "tunnel_down"), ("a4", "tunnel_up")]
    link.sent.clear()
    e = await svc.edit(P, P.actor(), "dc1", {"gateway_agent": ""})
    assert e["gateway_agent"] == "" and e["public_key"] == "" and gw not in iface.peers_
    assert [(a, m.WhichOneof("body")) for a, m in link.sent] == [("a4", "tunnel_down")]


def status(tunnel_id: str, public: str = "", up: bool = False, error: str = "") -> pb.AgentMessage:
    return pb.AgentMessage(tunnel_status=pb.TunnelStatus(tunnel_id=tunnel_id, public_key=public,
                                                          up=up, error=error))


def bodies(link: FakeLink) -> list[tuple[str, str, bool]]:
    """(agent, message kind, rotate) of what went down the streams."""
    return [(a, m.WhichOneof("body"), m.tunnel_up.rotate) for a, m in link.sent]


async def test_rotation_over_the_stream_swaps_the_key_then_tells_the_agent_to_switch(
        store: Store, tmp_path: Path, iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    link = FakeLink({"a1"})
    svc.attach_agents(cast(Any, link))
    agent_machine(store, "o1", "a1", "gw1", agent="a1")
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"], "gateway_agent": "gw1"})
    k1, k2 = (keys.public_of(keys.generate_private()) for _ in range(2))
    await link.deliver("a1", status(t["id"], k1))  # the first key, before it dials
    await link.deliver("a1", status(t["id"], k1, up=True))
    assert bodies(link) == [("a1", "tunnel_up", False)]  # no word to switch: nothing to switch from
    link.sent.clear()

    r = await svc.rotate(P, P.actor(), "dc1")
    assert "token" not in r and "install_command" not in r and r["public_key"] == k1
    assert bodies(link) == [("a1", "tunnel_up", True)]
    up = link.sent[0][1].tunnel_up
    assert up.tunnel_id == t["id"] and list(up.cidrs) == ["172.20.0.0/16"]
    [rot] = audit(store, "tunnel.rotate")
    assert rot["outcome"] == "success" and rot["details"]["agent"] == "a1" and rot["actor"]["kind"] != "agent"
    assert k1 in iface.peers_  # nothing changes until the new key arrives
    link.sent.clear()

    await link.deliver("a1", status(t["id"], k2))  # step 1 done: the new key, not in use yet
    assert k2 in iface.peers_ and k1 not in iface.peers_  # the hub swapped the peer's key
    assert iface.peers_[k2].allowed_ips == ("100.96.0.2/32", "172.20.0.0/16")
    assert svc.get(P, "dc1")["public_key"] == k2
    reg = audit(store, "tunnel.register")[-1]
    assert reg["details"]["rotated"] and reg["details"]["agent"] == "a1" and reg["actor"]["kind"] == "agent"
    assert bodies(link) == [("a1", "tunnel_up", False)]  # step 2: switch
    link.sent.clear()
    await link.deliver("a1", status(t["id"], k2, up=True))
    assert link.sent == []
    # a stream that broke before the word to switch arrived: the agent reports the new key,
    # not up with it; it is told again
    await link.deliver("a1", status(t["id"], k2))
    assert bodies(link) == [("a1", "tunnel_up", False)]


async def test_rotation_needs_the_agent_connected_and_says_when_its_stream_fails(
        store: Store, tmp_path: Path, iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    link = FakeLink({"a1"})
    svc.attach_agents(cast(Any, link))
    agent_machine(store, "o1", "a1", "gw1", agent="a1")
    await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"], "gateway_agent": "gw1"})
    link.sent.clear()
    link.up.clear()
    with pytest.raises(Invalid, match="not connected"):
        await svc.rotate(P, P.actor(), "dc1")
    assert not audit(store, "tunnel.rotate") and not link.sent
    link.up.add("a1")
    link.broken.add("a1")
    with pytest.raises(ProviderUnavailable, match="could not be asked for a new key"):
        await svc.rotate(P, P.actor(), "dc1")
    [rot] = audit(store, "tunnel.rotate")
    assert rot["outcome"] == "failed" and rot["details"]["error"]


async def test_a_tunnelup_that_could_not_be_sent_is_sent_when_the_agent_reports(
        store: Store, tmp_path: Path, iface: FakeInterface) -> None:
    svc = service(store, tmp_path, iface)
    link = FakeLink({"a1"})
    svc.attach_agents(cast(Any, link))
    agent_machine(store, "o1", "a1", "gw1", agent="a1")
    t = await svc.create(P, P.actor(), {"name": "dc1", "cidrs": ["172.20.0.0/16"], "gateway_agent": "gw1"})
    k1 = keys.public_of(keys.generate_private())
    await link.deliver("a1", status(t["id"], k1, up=True))
    link.sent.clear()
    link.broken.add("a1")  # the CIDRs change while its stream is broken
    await svc.edit(P, P.actor(), "dc1", {"cidrs": ["172.20.0.0/16", "172.24.0.0/24"]})
    assert link.sent == []
    link.broken.clear()
    await link.deliver("a1", status(t["id"], k1, up=True))  # it reports on its new stream
    [(aid, msg)] = link.sent
    assert aid == "a1" and list(msg.tunnel_up.cidrs) == ["172.20.0.0/16", "172.24.0.0/24"]
    link.sent.clear()
    await link.deliver("a1", status(t["id"], k1, up=True))
    assert link.sent == []  # told once
