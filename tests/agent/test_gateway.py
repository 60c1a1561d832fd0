"""The agent as a tunnel's gateway (agent.gateway) with an in-memory interface and iptables:
the key made and kept on the host (0600; only the public half sent, and before the interface
dials), the interface configured with the hub as its peer, forwarding and NAT for IPv4 and
IPv6 (from the hub's IPv6 twin; idempotent, removed on down), key rotation in two steps (the
old key kept on the interface until the controller says the hub has the new one, then a
packet to the hub), the configuration stored and restored after a restart, a report of
stored tunnels on a new stream, refusal without root, and that an idle agent does not load
it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.gateway import Gateways
from overcast.agent.v1 import agent_pb2 as pb
from tunnel import addressing, keys
from tunnel.backend import Peer, TunnelError

HUB_PRIVATE = keys.generate_private()


class FakeIface:
    def __init__(self, name: str, world: dict[str, Any]) -> None:
        self.name, self.netns, self.world = name, None, world
        self.peers_: dict[str, Peer] = {}
        self.routes: set[str] = set()
        self.addresses: tuple[str, ...] = ()
        self.private = ""
        world["ifaces"][name] = self

    def up(self) -> None:
        self.world["up"].add(self.name)
        self.world["log"].append("up")

    def down(self) -> None:
        self.world["up"].discard(self.name)

    def configure(self, private_key: str, listen_port: int | None = None) -> None:
        self.private = private_key

    def set_peer(self, peer: Peer) -> None:
        self.peers_[peer.public_key] = peer

    def remove_peer(self, public_key: str) -> None:
        self.peers_.pop(public_key, None)

    def set_address(self, *cidrs: str) -> None:
        self.addresses = cidrs

    def add_route(self, cidr: str) -> None:
        self.routes.add(cidr)

    def remove_route(self, cidr: str) -> None:
        self.routes.discard(cidr)

    def peers(self) -> dict[str, Any]:
        return {}


def rig(tmp_path: Path, root: bool = True) -> tuple[Gateways, dict[str, Any], list[pb.AgentMessage]]:
    world: dict[str, Any] = {"ifaces": {}, "up": set(), "nat": [], "log": [], "nudged": []}
    sent: list[pb.AgentMessage] = []

    async def send_up(msg: pb.AgentMessage) -> None:
        sent.append(msg)
        world["log"].append("status")

    def runner(argv: Any, stdin: str | None) -> str:
        assert argv[0] in ("iptables", "ip6tables") and list(argv[1:3]) == ["-t", "nat"]
        op, rule = argv[3], (argv[0], *argv[4:])
        if op == "-C" and rule not in world["nat"]:
            raise TunnelError("no such rule")
        if op == "-A":
            world["nat"].append(rule)
        if op == "-D":
            if rule not in world["nat"]:
                raise TunnelError("no such rule")
            world["nat"].remove(rule)
        return ""

    def nudge(address: str) -> None:
        world["nudged"].append(address)
        world["log"].append("nudge")

    (tmp_path / "fwd").write_text("0\n")
    (tmp_path / "fwd6").write_text("0\n")
    g = Gateways(tmp_path / "state", send_up, backend=lambda name: FakeIface(name, world),  # type: ignore[arg-type,return-value]
                 runner=runner, is_root=lambda: root, forwarding=str(tmp_path / "fwd"),
                 forwarding6=str(tmp_path / "fwd6"), nudge=nudge)
    return g, world, sent


def tunnel_up(cidrs: tuple[str, ...] = ("172.20.0.0/16", "fd00:1::/64"), rotate: bool = False) -> pb.TunnelUp:
    return pb.TunnelUp(tunnel_id="t1abcdef", interface="oc-t1abcdef", address="100.96.0.2/32",
                       hub_public_key=keys.public_of(HUB_PRIVATE), hub_endpoint="10.1.0.1:51820",
                       hub_address="100.96.0.1", cidrs=list(cidrs), keepalive=25, rotate=rotate)


def statuses(sent: list[pb.AgentMessage]) -> list[tuple[str, bool, str]]:
    return [(m.tunnel_status.public_key, m.tunnel_status.up, m.tunnel_status.error) for m in sent]


def test_up_makes_its_own_key_and_brings_the_tunnel_up(tmp_path: Path) -> None:
    g, world, sent = rig(tmp_path)
    asyncio.run(g.up(tunnel_up()))
    key_path = tmp_path / "state" / "tunnels" / "t1abcdef.key"
    private = key_path.read_text().strip()
    assert oct(os.stat(key_path).st_mode & 0o777) == "0o600"
    public = keys.public_of(private)
    assert statuses(sent) == [(public, False, ""), (public, True, "")]
    assert world["log"].index("status") < world["log"].index("up")  # the key first, then dial
    assert private not in str(sent)
    iface = world["ifaces"]["oc-t1abcdef"]
    assert iface.private == private and iface.addresses == ("100.96.0.2/32",)
    twin = addressing.ipv6_twin("100.96.0.1", keys.public_of(HUB_PRIVATE))
    [peer] = iface.peers_.values()
    assert peer.allowed_ips == ("100.96.0.1/32", f"{twin}/128")
    assert peer.endpoint == "10.1.0.1:51820" and peer.keepalive == 25
    assert iface.routes == {"100.96.0.1/32", f"{twin}/128"}
    assert (tmp_path / "fwd").read_text() == "1\n" and (tmp_path / "fwd6").read_text() == "1\n"
    rule = ("iptables", "POSTROUTING", "-s", "100.96.0.1", "-d", "172.20.0.0/16", "-j", "MASQUERADE")
    rule6 = ("ip6tables", "POSTROUTING", "-s", twin, "-d", "fd00:1::/64", "-j", "MASQUERADE")
    assert world["nat"] == [rule, rule6]
    assert not world["nudged"]  # a new interface sends its keepalive at once by itself
    # told again (a changed CIDR list, no IPv6 any more): the same key, NAT and routes in
    # line, no rule twice, no key sent ahead
    sent.clear()
    asyncio.run(g.up(tunnel_up(("172.20.0.0/16", "172.22.0.0/24"))))
    assert statuses(sent) == [(public, True, "")]
    assert len(world["nat"]) == 2 and world["nat"][0] == rule and rule6 not in world["nat"]
    assert iface.routes == {"100.96.0.1/32"}
    asyncio.run(g.down("t1abcdef"))
    assert world["nat"] == [] and "oc-t1abcdef" not in world["up"]
    assert not list((tmp_path / "state" / "tunnels").iterdir())


def test_an_ipv4_only_tunnel_leaves_ipv6_alone(tmp_path: Path) -> None:
    g, world, sent = rig(tmp_path)
    asyncio.run(g.up(tunnel_up(("172.20.0.0/16",))))
    assert [r[0] for r in world["nat"]] == ["iptables"]
    assert (tmp_path / "fwd6").read_text() == "0\n"
    assert world["ifaces"]["oc-t1abcdef"].routes == {"100.96.0.1/32"}


def test_rotation_keeps_the_old_key_on_the_interface_until_told_to_switch(tmp_path: Path) -> None:
    g, world, sent = rig(tmp_path)
    key_path = tmp_path / "state" / "tunnels" / "t1abcdef.key"

    async def run() -> None:
        await g.up(tunnel_up())
        old_private = key_path.read_text().strip()
        iface = world["ifaces"]["oc-t1abcdef"]
        sent.clear()
        await g.up(tunnel_up(rotate=True))  # step 1: a new key, reported, not used yet
        new_private = key_path.read_text().strip()
        assert new_private != old_private and oct(os.stat(key_path).st_mode & 0o777) == "0o600"
        new_public = keys.public_of(new_private)
        assert statuses(sent) == [(new_public, False, "")]
        assert iface.private == old_private and not world["nudged"]
        sent.clear()
        await g.report()  # a new stream meanwhile: the stored key, not up with it
        assert statuses(sent) == [(new_public, False, "")]
        sent.clear()
        await g.up(tunnel_up())  # step 2: the hub has it; switch and start the handshake
        assert iface.private == new_private and world["nudged"] == ["100.96.0.1"]
        assert statuses(sent) == [(new_public, True, "")]
        assert world["ifaces"] == {"oc-t1abcdef": iface} and len(world["nat"]) == 2
        sent.clear()
        await g.report()
        assert statuses(sent) == [(new_public, True, "")]
        await g.close()

    asyncio.run(run())


def test_restart_restores_and_reports_and_stop_keeps_the_configuration(tmp_path: Path) -> None:
    g, world, sent = rig(tmp_path)

    async def first() -> None:
        await g.up(tunnel_up())
        await g.close()  # the agent stops

    asyncio.run(first())
    assert world["nat"] == [] and not world["up"]
    public = sent[0].tunnel_status.public_key
    g2, world2, sent2 = rig(tmp_path)

    async def second() -> None:
        await g2.restore()
        await g2.report()

    asyncio.run(second())
    assert world2["up"] == {"oc-t1abcdef"} and len(world2["nat"]) == 2
    assert [(m.tunnel_status.tunnel_id, m.tunnel_status.public_key, m.tunnel_status.up) for m in sent2] == \
        [("t1abcdef", public, True)]
    asyncio.run(g2.close())


def test_without_root_or_with_bad_input_it_answers_an_error(tmp_path: Path) -> None:
    g, world, sent = rig(tmp_path, root=False)
    asyncio.run(g.up(tunnel_up()))
    assert [m.tunnel_status.error for m in sent] == ["the agent does not run as root: it cannot be a tunnel gateway"]
    assert not world["ifaces"] and not (tmp_path / "state" / "tunnels").exists()
    g, world, sent = rig(tmp_path)
    bad = tunnel_up()
    bad.tunnel_id = "../etc"
    asyncio.run(g.up(bad))
    assert "not valid" in sent[0].tunnel_status.error and not world["ifaces"]


def test_an_idle_agent_does_not_load_the_tunnel_code() -> None:
    code = ("import sys, agent.control; from agent.control import Agent; "
            "print(any(m == 'tunnel' or m.startswith('tunnel.') or m == 'agent.gateway' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(Path(__file__).resolve().parents[2]),
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                             [str(Path(__file__).resolve().parents[2]),
                              str(Path(__file__).resolve().parents[2] / "proto")])))
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr
