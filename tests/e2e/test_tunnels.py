"""Tunnels end to end, with real WireGuard (wireguard-go) in network namespaces: the
controller in the root namespace on a lab bridge (the hub, its own interface name and port),
a gateway host on the bridge and on a private link, and a private host reached only through
that link (sshd in it on an IPv4 and an IPv6 address, no route to the controller, none back
to the hub's IPv6 twin: only the gateway's NAT answers). A tunnel for both networks is
created through the REST API, the gateway runs the very install command the controller gave
(fetching the CA, checking its fingerprint, fetching the script, registering its own key),
the hub sees the handshake, and an "other server" cloud and commands reach the private
host's sshd through the tunnel over IPv4 and IPv6. Then the refusals (overlaps, the
controller's own network, a used token, a gateway whose key the hub does not know, delete in
use), rotation, restarts, and the teardown: the private host is unreachable again. Last, an
Overcast agent on the gateway host as the gateway: told over its stream, its key rotated
over it, killed and started again, and deleted. Needs root, iproute2, iptables, ip6tables,
curl and wireguard-go."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest

from tests.support import netns
from tests.support import sshd as sshd_support
from tests.support.agents import AgentProc
from tests.support.clouds import audit, poll, wait_job
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, free_port
from tests.support.netns import Host, Lab
from tunnel import addressing, keys
from tunnel.backend import Peer
from tunnel.wggo import WireguardGo


def _why() -> str | None:
    for tool in ("wireguard-go", "wg", "curl", "iptables", "ip6tables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (packaging/dev/bootstrap.sh test installs it)"
    return netns.available() or sshd_support.available()


why = _why()
pytestmark = [pytest.mark.root, pytest.mark.skipif(why is not None, reason=why or "")]


@dataclass
class World:
    c: Controller
    h: Http
    tmp: Path
    lab: Lab
    gw: Host
    private: Host
    subnet: str
    subnet6: str  # the private link's IPv6 network: the gateway at ::1, the private host ::2
    tunnel: dict[str, Any]
    gateway: subprocess.Popen[bytes]
    gateway_log: Path
    key: asyncssh.SSHKey
    up_after: float  # seconds from the gateway's start to the hub's first handshake
    agents: list[AgentProc] = field(default_factory=list)  # stopped by the fixture
    sshd: sshd_support.Sshd | None = None  # the private host's, while tests share it
    agent_tunnel: dict[str, Any] = field(default_factory=dict)  # the agent gateway's tunnel

    @property
    def private6(self) -> str:
        return str(ipaddress.ip_network(self.subnet6)[2])

    @property
    def gw6(self) -> str:
        return str(ipaddress.ip_network(self.subnet6)[1])


def wait_for(predicate: Callable[[], bool], within: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


def add_ipv6(gw: Host, private: Host, subnet6: str) -> None:
    """IPv6 on the private link (Lab.add_private makes it IPv4 only): the gateway's end ::1,
    the private host's ::2 (nodad: usable at once). No IPv6 route from the private host to
    anywhere else: answers to the hub reach it only through the gateway's NAT."""
    net = ipaddress.ip_network(subnet6)
    links = json.loads(subprocess.run(["ip", "-n", private.name, "-j", "link"], check=True,
                                      capture_output=True, text=True).stdout)
    [far] = [link["ifname"] for link in links if link["ifname"] != "lo"]
    for host, dev, a in ((gw, private.veth, net[1]), (private, far, net[2])):
        subprocess.run(["ip", "-n", host.name, "addr", "add", f"{a}/{net.prefixlen}", "dev", dev,
                        "nodad"], check=True)


def state(h: Http, tunnel_id: str) -> str:
    r = h.get(f"/api/v2/tunnels/{tunnel_id}")
    assert r.status == 200, r.body
    return str(r.body["data"]["health"]["state"])


def start_gateway(w_tmp: Path, gw: Host, command: str, ifname: str, state_dir: Path,
                  log: Path) -> subprocess.Popen[bytes]:
    """Run the install command as given, in ``gw``, as a user with sudo would: a ``sudo``
    shim runs it and adds the flags a test needs (the foreground, a state directory, a
    unique interface name)."""
    shim = w_tmp / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sudo").write_text(f'#!/bin/sh\nexec "$@" --foreground --state-dir {state_dir} '
                               f"--interface {ifname}\n")
    os.chmod(shim / "sudo", 0o755)
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}")
    with open(log, "ab") as out:
        return subprocess.Popen(gw.cmd("sh", "-c", command), env=env, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM to the gateway's process group (the script's trap removes its interface and
    NAT rules), KILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("tunnels")
    os.chmod(tmp, 0o755)
    n = random.randint(150, 249)
    subnet = f"172.30.{n}.0/24"
    subnet6 = f"fd{random.randint(16, 255):02x}:{random.randint(1, 0xffff):x}:{n}::/64"
    key = asyncssh.generate_private_key("ssh-ed25519")
    with Lab(subnet=n) as lab:
        gw = lab.add_host()
        private = lab.add_private(gw, subnet)
        add_ipv6(gw, private, subnet6)
        port = free_port()
        c = Controller(tmp / "ctl", {"OVERCAST_HTTP": f"{lab.gateway}:{port}",
                                     "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
                                     "OVERCAST_TUNNEL_INTERFACE": f"ochub{lab.tag}",
                                     "OVERCAST_TUNNEL_PORT": str(free_port()),
                                     "OVERCAST_TUNNEL_HEALTH_INTERVAL": "1"},
                       url=f"https://{lab.gateway}:{port}")
        c.http_port = port
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Tunnels")
        c.start()
        gateway: subprocess.Popen[bytes] | None = None
        w: World | None = None
        try:
            h = c.session()
            r = h.post("/api/v2/tunnels", {"name": "lab", "cidrs": [subnet, subnet6]})
            assert r.status == 201, r.body
            t = r.body["data"]
            log = tmp / "gateway.log"
            t0 = time.monotonic()
            gateway = start_gateway(tmp, gw, t["install_command"], f"ocgw{lab.tag}",
                                    tmp / "gwstate", log)
            try:
                wait_for(lambda: state(h, t["id"]) == "up", 30, "the tunnel up")
            except AssertionError:
                raise AssertionError(f"gateway: {log.read_text()}\ncontroller: "
                                     f"{c.log_path.read_text()[-3000:]}") from None
            w = World(c, h, tmp, lab, gw, private, subnet, subnet6, t, gateway, log, key,
                      time.monotonic() - t0)
            yield w
        finally:
            if w is not None and w.sshd is not None:
                w.sshd.stop()
            for a in (w.agents if w is not None else []):
                a.stop()
            if w is not None:
                stop(w.gateway)  # the one running now (a test may have restarted it)
            if gateway is not None:
                stop(gateway)
            if c.proc is not None and c.proc.poll() is None:
                c.stop()
            hub = f"ochub{lab.tag}"
            assert subprocess.run(["ip", "link", "show", hub], capture_output=True).returncode != 0, \
                "the controller removes its hub interface when it stops"


def test_the_gateway_registered_its_own_key_and_the_hub_sees_its_handshake(world: World) -> None:
    h, t = world.h, world.tunnel
    got = h.get(f"/api/v2/tunnels/{t['id']}").body["data"]
    state_dir = world.tmp / "gwstate"
    private = (state_dir / "private.key").read_text().strip()
    assert got["public_key"] == keys.public_of(private)  # made on the gateway, sent public
    assert oct(os.stat(state_dir / "private.key").st_mode & 0o777) == "0o600"
    assert private not in world.c.log_path.read_text() and "token" not in got
    assert got["health"]["last_handshake"] and got["health"]["rx_bytes"] > 0
    print(f"gateway start (install command run) to tunnel up: {world.up_after:.2f}s")
    assert world.up_after < 15, world.up_after
    gw_log = world.gateway_log.read_text()
    assert "registered with" in gw_log and "up on" in gw_log, gw_log
    for action in ("tunnel.create", "tunnel.register", "tunnel.up"):
        assert audit(h, action, t["id"]), action


def private_sshd(world: World) -> sshd_support.Sshd:
    """The private host's sshd, on its IPv4 and its IPv6 address, taking the test key."""
    sshd = sshd_support.Sshd(world.private, world.tmp / "sshd", hostname="ocpriv")
    with open(sshd.root / "sshd_config", "a") as f:
        f.write(f"ListenAddress [{world.private6}]:22\n")
    sshd.authorize(world.key.export_public_key().decode())
    return sshd


def machine_named(h: Http, name: str) -> dict[str, Any]:
    [m] = [m for m in h.get("/api/v2/machines?limit=1000").body["data"] if m["name"] == name]
    return dict(m)


def output(h: Http, job: dict[str, Any]) -> str:
    out = h.get(f"/api/v2/jobs/{job['id']}/output").body["data"]
    return "".join(text for o in out for _, text in o["chunks"])


def nat_rules(world: World, tool: str) -> str:
    return subprocess.run(world.gw.cmd(tool, "-t", "nat", "-S", "POSTROUTING"),
                          capture_output=True, text=True).stdout


def test_a_command_reaches_the_private_host_through_the_tunnel(world: World) -> None:
    h = world.h
    sshd = private_sshd(world)
    with sshd:  # start() connects from the root namespace: through the tunnel
        r = h.post("/api/v2/clouds", {"name": "Private", "provider": "other", "credentials": {
            "hosts": [{"host": world.private.address, "alias": "privbox",
                       "key": world.key.export_private_key().decode()},
                      {"host": world.private6, "alias": "privbox6",
                       "key": world.key.export_private_key().decode()}]}})
        assert r.status == 201, r.body
        poll(h, r.body["data"]["id"])
        m = machine_named(h, "privbox")
        r = h.post("/api/v2/commands", {"command": "echo hello-from-$(hostname)", "machine": m["id"]})
        assert r.status == 202, r.body
        job = wait_job(h, r.body["job_id"])
        assert job["status"] == "succeeded", job
        assert "hello-from-ocpriv" in output(h, job)
        # over IPv6: the hub sends from its IPv6 twin, the gateway masquerades it (sshd sees
        # the gateway's address; the private host has no route back to the twin)
        twin = addressing.ipv6_twin("100.96.0.1", _hub_public(world))
        assert f"-s {twin}/128 -d {world.subnet6} -j MASQUERADE" in nat_rules(world, "ip6tables")
        m6 = machine_named(h, "privbox6")
        job = run_via_agent(h, m6["id"], "echo hello6-from-$(hostname) from ${SSH_CONNECTION%% *}")
        assert job["status"] == "succeeded", job
        assert f"hello6-from-ocpriv from {world.gw6}" in output(h, job), output(h, job)
        # and a shell, over its WebSocket, typed at and left with an exit status
        r = h.post(f"/api/v2/machines/{m['id']}/actions/ssh", {"cols": 80, "rows": 24})
        assert r.status == 201, r.body
        typed, code = asyncio.run(_type_into_shell(world, r.body["data"]["location"],
                                                   b"echo shell-on-$(hostname)\nexit 6\n"))
        assert b"shell-on-ocpriv" in typed and code == 6, (typed, code)
        # deleting the tunnel while machines are reached through it: refused in words
        r = h.delete(f"/api/v2/tunnels/{world.tunnel['id']}")
        assert r.status == 409 and "privbox" in r.body["error"]["message"], r.body
        assert "privbox6" in r.body["error"]["details"]["machines"], r.body


async def _type_into_shell(world: World, location: str, typed: bytes) -> tuple[bytes, int | None]:
    """Open the shell's WebSocket, type ``typed`` once it is ready, read until it exits."""
    out, code = bytearray(), None
    async with aiohttp.ClientSession() as session, session.ws_connect(
            location, ssl=world.c.ssl_context() or True) as ws:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = await ws.receive(timeout=deadline - time.monotonic())
            if msg.type == aiohttp.WSMsgType.BINARY:
                out += msg.data
            elif msg.type == aiohttp.WSMsgType.TEXT:
                control = json.loads(msg.data)
                if control["type"] == "ready":
                    await ws.send_bytes(typed)
                elif control["type"] == "exit":
                    code = control["code"]
                    break
                elif control["type"] == "error":
                    raise AssertionError(control)
            else:
                break
    return bytes(out), code


def test_bad_input_is_refused_in_words(world: World) -> None:
    h = world.h
    r = h.post("/api/v2/tunnels", {"name": "again", "cidrs": [world.subnet]})
    assert r.status == 409 and "tunnel 'lab'" in r.body["error"]["message"], r.body
    r = h.post("/api/v2/tunnels", {"name": "own", "cidrs": [f"10.{world.lab.subnet}.0.0/24"]})
    assert r.status == 422 and "controller's own network" in r.body["error"]["message"], r.body
    r = h.post("/api/v2/tunnels", {"name": "bad", "cidrs": ["172.16.0.1/12"]})
    assert r.status == 422 and "host bits" in r.body["error"]["message"], r.body
    # the gateway's token was used: registering again with it is refused (and audited)
    token = world.tunnel["token"]
    public = keys.public_of(keys.generate_private())
    anon = world.c.http()
    r = anon.post("/api/v2/tunnels/register", {"token": token, "public_key": public})
    assert r.status == 401 and "not valid" in r.body["error"]["message"], r.body
    r = anon.post("/api/v2/tunnels/register", {"token": "oct_wrong", "public_key": public})
    assert r.status == 401
    r = anon.get("/install/tunnel.sh")
    assert r.status == 200 and r.raw.startswith(b"#!/bin/sh")


def test_a_gateway_whose_key_the_hub_does_not_know_gets_no_handshake(world: World) -> None:
    h = world.h
    r = h.post("/api/v2/tunnels", {"name": "ghost", "cidrs": ["172.29.0.0/24"]})
    assert r.status == 201, r.body
    t = r.body["data"]
    registered = keys.generate_private()
    anon = world.c.http()
    r = anon.post("/api/v2/tunnels/register", {"token": t["token"], "public_key": keys.public_of(registered)})
    assert r.status == 201, r.body
    answer = r.body["data"]
    host = world.lab.add_host()
    iface = WireguardGo(f"ocwk{world.lab.tag}", host.name)
    try:
        iface.configure(keys.generate_private())  # not the key it registered
        iface.set_address(answer["address"])
        iface.set_peer(Peer(answer["hub_public_key"], [answer["allowed_ips"]],
                            answer["hub_endpoint"], keepalive=1))
        iface.up()
        iface.add_route(answer["allowed_ips"])
        time.sleep(4)
        assert state(h, t["id"]) == "waiting"
        assert iface.peers()[answer["hub_public_key"]].last_handshake is None
    finally:
        iface.down()
    assert h.delete(f"/api/v2/tunnels/{t['id']}").status == 204


def wg_pid(ifname: str) -> int | None:
    """The pid of the wireguard-go serving ``ifname`` (names are machine-wide), from /proc."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = [a for a in Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if len(argv) >= 2 and os.path.basename(argv[0]) == b"wireguard-go" and argv[-1] == ifname.encode():
            return int(d)
    return None


def run_via_agent(h: Http, machine: str, command: str, within: float = 30) -> dict[str, Any]:
    r = h.post("/api/v2/commands", {"command": command, "machine": machine, "timeout": 20})
    assert r.status == 202, r.body
    return wait_job(h, r.body["job_id"], within)


def answers_via_agent(h: Http, machine: str) -> bool:
    """A command through the agent succeeded; False while it is refused or still waits (the
    agent may be reconnecting)."""
    r = h.post("/api/v2/commands", {"command": "true", "machine": machine, "timeout": 10})
    if r.status != 202:
        return False
    try:
        return bool(wait_job(h, r.body["job_id"], 15)["status"] == "succeeded")
    except AssertionError:
        return False


def test_an_agent_behind_the_tunnel_enrols_and_connects_through_it(world: World) -> None:
    """A join token for the tunnel: its command names the controller at the hub's address,
    where the private host reaches its HTTPS and agents listeners through the tunnel (a
    certificate of the controller's CA naming that address); enrolment answers the hub's
    agents endpoint. No hosts-file trick: the agent verifies what it was told."""
    h, c = world.h, world.c
    r = h.post("/api/v2/agents/tokens", {"tunnel": world.tunnel["name"], "name": "behind"})
    assert r.status == 201, r.body
    tok = r.body
    assert tok["tunnel"] == world.tunnel["id"]
    hub = "100.96.0.1"  # the first address of the default tunnel_network
    url = f"https://{hub}:{c.http_port}"
    assert f"--controller {url} " in tok["command"], tok["command"]
    r = h.post("/api/v2/agents/tokens", {"tunnel": "no-such-tunnel"})
    assert r.status == 404, r.body
    agent = AgentProc(c, world.tmp / "agent-priv", host=world.private, hostname="ocprivagent")
    world.agents.append(agent)
    r2 = subprocess.run(agent.argv("--controller", url, "--token", tok["token"],
                                   "--ca-fingerprint", c.ca_fingerprint, "--enrol-only"),
                        capture_output=True, text=True, env=agent.env(), timeout=60)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    saved = (world.tmp / "agent-priv" / "agent.json").read_text()
    assert f'"{hub}:' in saved, saved  # it dials the hub's agents listener
    agent.start()
    aid = agent.agent_id

    def running() -> bool:
        g = h.get(f"/api/v2/machines/{aid}")
        return g.status == 200 and g.body["data"]["state"] == "running"

    try:
        wait_for(running, 45, "the agent's machine running")
    except AssertionError:
        raise AssertionError(f"agent: {agent.log_path.read_text()[-3000:]}") from None
    a = h.get(f"/api/v2/agents/{aid}").body["data"]
    assert a["connected"], a
    job = run_via_agent(h, aid, "echo agent-on-$(hostname)")
    assert job["status"] == "succeeded", job
    [target] = job["result"]["targets"]
    assert target.get("via") == "agent", target
    out = h.get(f"/api/v2/jobs/{job['id']}/output").body["data"]
    assert "agent-on-ocprivagent" in "".join(text for o in out for _, text in o["chunks"])

    # the gateway's wireguard-go dies; the script exits (its unit would start it again: we
    # do, at once, as `sh tunnel.sh --up --foreground`): the agent is connected again
    ifname = f"ocgw{world.lab.tag}"
    pid = wg_pid(ifname)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    world.gateway.wait(15)
    script = world.tmp / "tunnel.sh"
    script.write_bytes(h.get("/install/tunnel.sh").raw)
    with open(world.gateway_log, "ab") as out_f:
        world.gateway = subprocess.Popen(
            world.gw.cmd("sh", str(script), "--up", "--foreground", "--state-dir",
                         str(world.tmp / "gwstate")),
            stdout=out_f, stderr=out_f, stdin=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()

    took = wait_for(lambda: answers_via_agent(h, aid), 90, "a command through the agent after the gateway restarted")
    print(f"gateway wireguard-go killed and restarted: agent answers after {time.monotonic() - t0:.1f}s "
          f"({took:.1f}s of polling)")
    assert h.get(f"/api/v2/agents/{aid}").body["data"]["connected"]


def hub_peers(world: World) -> str:
    return subprocess.run(["wg", "show", f"ochub{world.lab.tag}", "peers"],
                          capture_output=True, text=True).stdout


def agent_machine(world: World) -> str:
    [a] = world.agents
    return a.agent_id


def test_rotation_moves_the_tunnel_to_a_new_key_and_the_old_one_no_longer_handshakes(world: World) -> None:
    h, t = world.h, world.tunnel
    aid = agent_machine(world)
    state_dir = world.tmp / "gwstate"
    old_private = (state_dir / "private.key").read_text().strip()
    old_public = keys.public_of(old_private)
    assert old_public in hub_peers(world)
    t0 = time.monotonic()
    r = h.post(f"/api/v2/tunnels/{t['id']}/actions/rotate")
    assert r.status == 200, r.body
    command = r.body["data"]["install_command"]
    assert "--rotate" in command
    previous = world.gateway
    # the new command on the gateway: a new key, registered; the script stops the running one
    world.gateway = start_gateway(world.tmp, world.gw, command, f"ocgw{world.lab.tag}",
                                  state_dir, world.gateway_log)
    previous.wait(15)
    new_private = (state_dir / "private.key").read_text().strip()
    assert new_private != old_private
    new_public = keys.public_of(new_private)
    got = h.get(f"/api/v2/tunnels/{t['id']}").body["data"]
    assert got["public_key"] == new_public
    peers = hub_peers(world)
    assert new_public in peers and old_public not in peers, peers  # the hub replaced the peer

    wait_for(lambda: answers_via_agent(h, aid), 30, "a command on the private host after the rotation")
    took = time.monotonic() - t0
    print(f"rotation (API call, install command, new key registered) to the private host "
          f"answering again: {took:.1f}s")
    assert took < 15, took
    wait_for(lambda: state(h, t["id"]) == "up", 15, "the tunnel up with the new key")
    assert audit(h, "tunnel.rotate", t["id"]) and audit(h, "tunnel.register", t["id"])
    # the old key dials the hub from elsewhere: no handshake
    host = world.lab.add_host()
    hub_port = world.c.extra_env["OVERCAST_TUNNEL_PORT"]
    iface = WireguardGo(f"ocold{world.lab.tag}", host.name)
    try:
        iface.configure(old_private)
        iface.set_address(t["address"])
        hub_pub = _hub_public(world)
        iface.set_peer(Peer(hub_pub, ["100.96.0.1/32"], f"{world.lab.gateway}:{hub_port}",
                            keepalive=1))
        iface.up()
        iface.add_route("100.96.0.1/32")
        time.sleep(4)
        assert iface.peers()[hub_pub].last_handshake is None
    finally:
        iface.down()


def _hub_public(world: World) -> str:
    out = subprocess.run(["wg", "show", f"ochub{world.lab.tag}", "public-key"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


def test_a_controller_restart_restores_the_hub(world: World) -> None:
    h, c, t = world.h, world.c, world.tunnel
    aid = agent_machine(world)
    hub_if = f"ochub{world.lab.tag}"
    before = hub_peers(world).split()
    c.stop()
    assert subprocess.run(["ip", "link", "show", hub_if], capture_output=True).returncode != 0
    t0 = time.monotonic()
    c.start()
    assert hub_peers(world).split() == before  # the peer is back, with its key
    routes = subprocess.run(["ip", "route", "show", "dev", hub_if], capture_output=True,
                            text=True).stdout
    assert world.subnet in routes, routes
    wait_for(lambda: state(h, t["id"]) == "up", 40, "the gateway's handshake with the new hub")

    try:
        wait_for(lambda: answers_via_agent(h, aid), 90, "the agent behind the tunnel reconnected and answering")
    except AssertionError:
        raise AssertionError(f"agent: {world.agents[0].log_path.read_text()[-2000:]}\ncontroller: "
                             f"{c.log_path.read_text()[-3000:]}") from None
    print(f"controller restart (start to ready) to the agent behind the tunnel answering: "
          f"{time.monotonic() - t0:.1f}s")
    assert h.get(f"/api/v2/agents/{aid}").body["data"]["connected"]


def test_deleting_the_tunnel_makes_the_private_host_unreachable(world: World) -> None:
    h = world.h
    r = h.delete(f"/api/v2/tunnels/{world.tunnel['id']}?force=true")
    assert r.status == 204, r.body
    stop(world.gateway)
    assert f"ocgw{world.lab.tag}" not in subprocess.run(
        ["ip", "-n", world.gw.name, "link"], capture_output=True, text=True).stdout
    for tool in ("iptables", "ip6tables"):
        nat = nat_rules(world, tool)
        assert "MASQUERADE" not in nat, nat
    [m] = [m for m in h.get("/api/v2/machines?limit=1000").body["data"] if m["name"] == "privbox"]
    r = h.post("/api/v2/commands", {"command": "true", "machine": m["id"], "timeout": 20})
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"], 60)
    assert job["status"] == "failed", job
    [target] = job["result"]["targets"]
    assert target.get("error"), target


def agent_ifname(world: World) -> str:
    return f"oc-{world.agent_tunnel['id'][:8]}"


def agent_key_file(world: World) -> Path:
    return world.tmp / "agent-gw" / "tunnels" / f"{world.agent_tunnel['id']}.key"


def gateway_agent(world: World) -> AgentProc:
    [a] = [a for a in world.agents if a.state_dir == world.tmp / "agent-gw"]
    return a


def test_an_agent_on_the_gateway_host_brings_the_tunnel_up_when_told(world: World) -> None:
    """The script gateway is gone (the test before deleted its tunnel): an Overcast agent on
    the same gateway host, enrolled normally over the bridge, is told to be the gateway of a
    new tunnel to the same private networks. It makes its own key, and the private host's
    sshd answers through it, over IPv4 and IPv6."""
    h, c = world.h, world.c
    tok = h.post("/api/v2/agents/tokens", {"name": "gwagent"})
    assert tok.status == 201, tok.body
    agent = AgentProc(c, world.tmp / "agent-gw", host=world.gw, hostname="ocgwagent")
    world.agents.append(agent)
    enrolled = agent.enrol(tok.body["token"])
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    agent.start()
    aid = agent.agent_id
    wait_for(lambda: h.get(f"/api/v2/agents/{aid}").body["data"].get("connected") is True, 30,
             "the gateway's agent connected")
    priv = machine_named(h, "privbox")
    # bad input: a machine without an agent, one that does not exist
    for ref in (priv["id"], "no-such-machine"):
        r = h.post("/api/v2/tunnels", {"name": "viaagent", "cidrs": [world.subnet], "gateway_agent": ref})
        assert r.status == 404, r.body
    t0 = time.monotonic()
    r = h.post("/api/v2/tunnels", {"name": "viaagent", "cidrs": [world.subnet, world.subnet6],
                                   "gateway_agent": aid})
    assert r.status == 201, r.body
    t = world.agent_tunnel = r.body["data"]
    assert "install_command" not in t and t["gateway_agent"] == aid
    try:
        wait_for(lambda: state(h, t["id"]) == "up", 30, "the agent's tunnel up")
    except AssertionError:
        raise AssertionError(f"agent: {agent.log_path.read_text()[-3000:]}") from None
    print(f"tunnel created to its agent gateway up: {time.monotonic() - t0:.2f}s")
    ifname, key_file = agent_ifname(world), agent_key_file(world)
    got = h.get(f"/api/v2/tunnels/{t['id']}").body["data"]
    assert got["public_key"] == keys.public_of(key_file.read_text().strip())
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"
    assert ifname in subprocess.run(["ip", "-n", world.gw.name, "link"], capture_output=True, text=True).stdout
    assert f"-d {world.subnet}" in nat_rules(world, "iptables")
    assert f"-d {world.subnet6} -j MASQUERADE" in nat_rules(world, "ip6tables")
    reg = audit(h, "tunnel.register", t["id"])
    assert reg, "tunnel.register audited"

    world.sshd = private_sshd(world).start()  # reached from the root namespace: through the agent's tunnel
    job = run_via_agent(h, priv["id"], "echo hello-via-agent-$(hostname)", within=60)
    assert job["status"] == "succeeded", job
    assert "hello-via-agent-ocpriv" in output(h, job)
    job = run_via_agent(h, machine_named(h, "privbox6")["id"],
                        "echo hello6-via-agent-$(hostname) from ${SSH_CONNECTION%% *}", within=60)
    assert job["status"] == "succeeded", job
    assert f"hello6-via-agent-ocpriv from {world.gw6}" in output(h, job), output(h, job)


class Prober:
    """TCP connections from the root namespace (the controller's side) to the private host's
    sshd, through the tunnel, every 50 ms in a thread: the longest stretch without one that
    succeeds is how long the tunnel was lost."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.results: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                socket.create_connection((self.address, 22), timeout=0.3).close()
                ok = True
            except OSError:
                ok = False
            self.results.append((t, ok))
            self._stop.wait(0.05)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest_gap(self) -> float:
        """Seconds between the two successes furthest apart (0 when none failed)."""
        times = [t for t, ok in self.results if ok]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def test_rotating_an_agent_gateways_key_over_its_stream(world: World) -> None:
    """rotate on an agent's tunnel: no token, no install command; the agent makes a new key
    and the hub swaps the peer's key; the tunnel is lost for about a handshake; the old key
    is gone from the hub and handshakes no more; audited like the script's rotation."""
    h, t = world.h, world.agent_tunnel
    assert t, "the test before made the agent's tunnel"
    key_file = agent_key_file(world)
    old_private = key_file.read_text().strip()
    old_public = keys.public_of(old_private)
    assert old_public in hub_peers(world)
    priv = machine_named(h, "privbox")
    with Prober(world.private.address) as probe:
        time.sleep(0.5)
        t0 = time.monotonic()
        r = h.post(f"/api/v2/tunnels/{t['id']}/actions/rotate")
        assert r.status == 200, r.body
        assert "install_command" not in r.body["data"] and "token" not in r.body["data"]
        wait_for(lambda: h.get(f"/api/v2/tunnels/{t['id']}").body["data"]["public_key"] != old_public,
                 15, "the agent's new key registered")
        new_private = key_file.read_text().strip()
        new_public = keys.public_of(new_private)
        assert new_private != old_private and oct(os.stat(key_file).st_mode & 0o777) == "0o600"
        assert h.get(f"/api/v2/tunnels/{t['id']}").body["data"]["public_key"] == new_public
        wait_for(lambda: any(ok and when > t0 for when, ok in probe.results[-3:]), 15,
                 "the private host reached through the tunnel with the new key")
        took = time.monotonic() - t0
        time.sleep(1)
    gap = probe.longest_gap()
    print(f"agent gateway rotation: API call to the private host reached again {took:.2f}s; "
          f"longest time without a connection through the tunnel {gap:.2f}s")
    assert gap < 3, gap  # one handshake, not WireGuard's 5 s handshake retry
    peers = hub_peers(world)
    assert new_public in peers and old_public not in peers, peers  # the hub replaced the peer
    wg_key = subprocess.run(world.gw.cmd("wg", "show", agent_ifname(world), "private-key"),
                            capture_output=True, text=True).stdout.strip()
    assert wg_key == new_private  # the interface runs the new key; the old one is on no disk
    # in two steps: the new key reported while the interface kept the old one, then switched
    assert "the interface keeps the old one until the hub has the new one" in \
        gateway_agent(world).log_path.read_text()
    job = run_via_agent(h, priv["id"], "echo after-rotation-$(hostname)")
    assert job["status"] == "succeeded" and "after-rotation-ocpriv" in output(h, job), job
    [rot] = audit(h, "tunnel.rotate", t["id"])
    assert rot["details"]["agent"] == t["gateway_agent"] and rot["actor"]["kind"] != "agent", rot
    reg = audit(h, "tunnel.register", t["id"])[0]  # newest first
    assert reg["details"]["rotated"] and reg["actor"]["kind"] == "agent", reg
    assert old_private not in world.c.log_path.read_text() + gateway_agent(world).log_path.read_text()
    # the old key dials the hub from elsewhere: no handshake
    host = world.lab.add_host()
    hub_port = world.c.extra_env["OVERCAST_TUNNEL_PORT"]
    iface = WireguardGo(f"ocolda{world.lab.tag}", host.name)
    try:
        iface.configure(old_private)
        iface.set_address(t["address"])
        hub_pub = _hub_public(world)
        iface.set_peer(Peer(hub_pub, ["100.96.0.1/32"], f"{world.lab.gateway}:{hub_port}", keepalive=1))
        iface.up()
        iface.add_route("100.96.0.1/32")
        time.sleep(4)
        assert iface.peers()[hub_pub].last_handshake is None
    finally:
        iface.down()


def test_a_killed_agent_gateway_brings_its_tunnel_back_when_started_again(world: World) -> None:
    """kill -9 of the gateway's agent (its wireguard-go goes with it: the interface is gone),
    then the agent started again: it brings the tunnel up from what it stored, with the same
    key, and a command reaches the private host again; the controller does nothing for it
    (the hub keeps the peer and key; no new registration)."""
    h, t = world.h, world.agent_tunnel
    assert t, "the first agent test made the agent's tunnel"
    agent, ifname = gateway_agent(world), agent_ifname(world)
    peers_before = hub_peers(world)
    registered = len(audit(h, "tunnel.register", t["id"]))
    assert agent.proc is not None
    agent.proc.kill()
    agent.proc.wait(10)
    agent.log.close()
    try:  # its wireguard-go ends with it (it was started with a parent-death signal)
        wait_for(lambda: wg_pid(ifname) is None, 5, "the agent's wireguard-go gone with it")
    except AssertionError:
        pid = wg_pid(ifname)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: ifname not in subprocess.run(["ip", "-n", world.gw.name, "link"],
                                                  capture_output=True, text=True).stdout,
             10, "the interface gone with wireguard-go")
    priv = machine_named(h, "privbox")
    r = h.post("/api/v2/commands", {"command": "true", "machine": priv["id"], "timeout": 5})
    assert r.status == 202 and wait_job(h, r.body["job_id"], 30)["status"] == "failed"

    t0 = time.monotonic()
    agent.start()
    try:
        took = wait_for(lambda: answers_via_agent(h, priv["id"]), 60,
                        "a command on the private host after the agent gateway restarted")
    except AssertionError:
        raise AssertionError(f"agent: {agent.log_path.read_text()[-3000:]}") from None
    print(f"agent gateway killed and started again: private host answers after "
          f"{time.monotonic() - t0:.1f}s ({took:.1f}s of polling)")
    assert "up again on " + ifname in agent.log_path.read_text()
    assert hub_peers(world) == peers_before  # same key, nothing changed at the hub
    assert len(audit(h, "tunnel.register", t["id"])) == registered
    wait_for(lambda: state(h, t["id"]) == "up", 15, "the tunnel up")


def test_deleting_the_agents_tunnel_brings_it_down_there(world: World) -> None:
    h, t = world.h, world.agent_tunnel
    assert t, "the first agent test made the agent's tunnel"
    ifname, key_file = agent_ifname(world), agent_key_file(world)
    r = h.delete(f"/api/v2/tunnels/{t['id']}?force=true")
    assert r.status == 204, r.body
    wait_for(lambda: ifname not in subprocess.run(["ip", "-n", world.gw.name, "link"],
                                                  capture_output=True, text=True).stdout,
             15, "the agent took its interface down")
    # the interface goes with wireguard-go, a moment before the agent forgets the key
    wait_for(lambda: not key_file.exists(), 5, "the agent forgot the tunnel's key")
    for tool in ("iptables", "ip6tables"):
        nat = nat_rules(world, tool)
        assert "MASQUERADE" not in nat, nat
    priv = machine_named(h, "privbox")
    r = h.post("/api/v2/commands", {"command": "true", "machine": priv["id"], "timeout": 20})
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"], 60)
    assert job["status"] == "failed", job
