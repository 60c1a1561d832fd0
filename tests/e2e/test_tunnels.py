"""Tunnels end to end, with real WireGuard (wireguard-go) in network namespaces: the
controller in the root namespace on a lab bridge (the hub, its own interface name and port),
a gateway host on the bridge and on a private link, and a private host reached only through
that link (sshd in it, no route to the controller). A tunnel is created through the REST API,
the gateway runs the very install command the controller gave (fetching the CA, checking its
fingerprint, fetching the script, registering its own key), the hub sees the handshake, and
an "other server" cloud and a command reach the private host's sshd through the tunnel.
Then the refusals (overlaps, the controller's own network, a used token, a gateway whose
key the hub does not know, delete in use), and the teardown: the private host is
unreachable again. Needs root, iproute2, iptables, curl and wireguard-go."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.support import netns
from tests.support import sshd as sshd_support
from tests.support.clouds import audit, poll, wait_job
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, free_port
from tests.support.netns import Host, Lab
from tunnel import keys
from tunnel.wggo import WireguardGo


def _why() -> str | None:
    for tool in ("wireguard-go", "wg", "curl", "iptables"):
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
    tunnel: dict[str, Any]
    gateway: subprocess.Popen[bytes]
    gateway_log: Path
    key: asyncssh.SSHKey
    up_after: float  # seconds from the gateway's start to the hub's first handshake


def wait_for(predicate: Callable[[], bool], within: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


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
    key = asyncssh.generate_private_key("ssh-ed25519")
    with Lab(subnet=n) as lab:
        gw = lab.add_host()
        private = lab.add_private(gw, subnet)
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
        try:
            h = c.session()
            r = h.post("/api/v2/tunnels", {"name": "lab", "cidrs": [subnet]})
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
            yield World(c, h, tmp, lab, gw, private, subnet, t, gateway, log, key,
                        time.monotonic() - t0)
        finally:
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


def test_a_command_reaches_the_private_host_through_the_tunnel(world: World) -> None:
    h = world.h
    sshd = sshd_support.Sshd(world.private, world.tmp / "sshd", hostname="ocpriv")
    sshd.authorize(world.key.export_public_key().decode())
    with sshd:  # start() connects from the root namespace: through the tunnel
        r = h.post("/api/v2/clouds", {"name": "Private", "provider": "other", "credentials": {
            "hosts": [{"host": world.private.address, "alias": "privbox",
                       "key": world.key.export_private_key().decode()}]}})
        assert r.status == 201, r.body
        poll(h, r.body["data"]["id"])
        ms = h.get("/api/v2/machines?limit=1000").body["data"]
        [m] = [m for m in ms if m["name"] == "privbox"]
        r = h.post("/api/v2/commands", {"command": "echo hello-from-$(hostname)", "machine": m["id"]})
        assert r.status == 202, r.body
        job = wait_job(h, r.body["job_id"])
        assert job["status"] == "succeeded", job
        out = h.get(f"/api/v2/jobs/{job['id']}/output").body["data"]
        assert "hello-from-ocpriv" in "".join(text for o in out for _, text in o["chunks"])
        # deleting the tunnel while the machine is reached through it: refused in words
        r = h.delete(f"/api/v2/tunnels/{world.tunnel['id']}")
        assert r.status == 409 and "privbox" in r.body["error"]["message"], r.body


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
        from tunnel.backend import Peer

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


def test_deleting_the_tunnel_makes_the_private_host_unreachable(world: World) -> None:
    h = world.h
    r = h.delete(f"/api/v2/tunnels/{world.tunnel['id']}?force=true")
    assert r.status == 204, r.body
    stop(world.gateway)
    assert f"ocgw{world.lab.tag}" not in subprocess.run(
        ["ip", "-n", world.gw.name, "link"], capture_output=True, text=True).stdout
    nat = subprocess.run(world.gw.cmd("iptables", "-t", "nat", "-S", "POSTROUTING"),
                         capture_output=True, text=True).stdout
    assert "MASQUERADE" not in nat, nat
    [m] = [m for m in h.get("/api/v2/machines?limit=1000").body["data"] if m["name"] == "privbox"]
    r = h.post("/api/v2/commands", {"command": "true", "machine": m["id"], "timeout": 20})
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"], 60)
    assert job["status"] == "failed", job
    [target] = job["result"]["targets"]
    assert target.get("error"), target
