"""Tunnels: TCP throughput through WireGuard (wireguard-go) managed by Overcast against the
same tunnel configured by hand and the plain veth path; time to the first handshake; recovery
after a gateway's wireguard-go dies.

All in network namespaces on this machine (``tests/support/netns.py``'s ``Lab``: a bridge in
the root namespace, 10.<n>.0.0/24 with n in 10-19, a range the tests do not take): a "hub"
host and a "gateway" host on the bridge, and a private host behind the gateway (its only link
is a veth pair to the gateway; no route to the bridge).

1. The tunnels, all up at once, each with its own interface names, keys, port and
   /24 of tunnel addresses (interface names are machine-wide with wireguard-go):
   - ``veth``: no tunnel, the hub host to the gateway host's bridge address;
   - ``hand``: wireguard-go started by hand in each namespace (``ip netns exec NS
     wireguard-go -f IF``) and configured with ``wg set`` and ``ip`` only (no Overcast code);
     hub on a fixed port, gateway dialling it with a keepalive of 25 s;
   - ``managed``: the same two ends through ``tunnel.wggo.WireguardGo`` (the backend the
     controller uses where there is no kernel module: wireguard-go supervised by a thread,
     configured through its UAPI socket), same roles and settings;
   - ``controller_gateway`` and ``controller_private``: a real controller (``tests/support/
     controller.py``) in the root namespace is the hub (its own ``tunnel_interface``,
     ``tunnel_port`` and ``tunnel_network``); a tunnel is created with ``POST
     /api/v2/tunnels`` for the private network, and the gateway host runs the very install
     command the controller answered (``/install/tunnel.sh``: its own key, registration
     with the one-use token, wireguard-go, forwarding and NAT), through a ``sudo`` shim
     that adds ``--foreground --state-dir --interface``. Traffic goes from the root
     namespace (the controller's side) to the gateway's tunnel address, and to the private
     host behind it (forwarded and NATed by the gateway: the real use).
   The controller listens on the bridge address; an agent on the private host enrols with a
   join token made for the tunnel (``POST /api/v2/agents/tokens {"tunnel": ...}``, the
   CLI's ``--tunnel``): its command names the controller at the hub's tunnel address, where
   the controller also listens while the hub is up (HTTPS and the agents' gRPC, with a
   certificate of its own CA naming that address), so the agent enrols and connects through
   the tunnel and verifies what it was told.
2. Throughput: a small Python receiver in the receiving namespace, a Python sender in the
   sending one (``ip netns exec``), ``--mb`` MB (10^6 bytes) of zeros in 1 MiB writes on
   one TCP connection (kernel buffer autotuning), MB/s measured at the receiver (first byte
   to end of stream). One unmeasured warm-up transfer per path, then ``--repeats`` rounds
   of all paths interleaved (veth, hand, managed, controller..., veth, ...) so that a load
   change hits all alike; the median per path. Per transfer also the CPU seconds of the
   path's wireguard-go processes and of the machine's other processes. Senders, receivers
   and every wireguard-go run in a session of their own, as ``WireguardGo`` starts
   wireguard-go: with the kernel's autogroup scheduling (on here), the processes of one
   session share one CPU share, and a hand-made wireguard-go left in the benchmark's
   session ran ~15 % faster than one in its own session on these 2 cores (sender, receiver
   and both ends of the tunnel compete for them), which is scheduling, not management.
   **Target: managed ≥ 90 % of hand** (management must cost nothing on the data path).
3. First handshake: a new gateway interface through ``WireguardGo`` (``up()``, then its key,
   address and the hub as peer with endpoint and keepalive, as ``tests/tunnel/
   test_wggo.py`` does; the hub got the gateway's peer first, as registration does) until
   its ``peers()`` report a handshake; ``--handshakes`` times (median). **Target < 2 s.**
   The same by hand (``wg`` polled), and once the controller's install command from its
   start to the hub's first handshake.
4. Recovery: ``kill -9`` of the managed gateway's wireguard-go; the supervisor restarts it
   and applies its configuration again; time until a TCP connection through the tunnel
   works again (``--kills`` times). And with the controller: ``kill -9`` of the gateway's
   wireguard-go started by the install script (the script notices, removes its interface
   and NAT rules and exits 1); it is started again at once as its systemd unit would
   (``sh tunnel.sh --up --foreground``; the unit waits ``RestartSec=2`` first); time until
   the hub sees a new handshake and until a command through the agent on the private host
   answers (``POST /api/v2/commands`` to its machine, repeated until one succeeds), and
   whether the agent's stream survived or it reconnected (``connected_since``).

Everything (processes, interfaces, namespaces, the temporary directory) is removed at the
end, on error and on SIGTERM. Needs root, iproute2, wireguard-go, wireguard-tools (wg); the
controller part also curl and iptables (``--no-controller`` skips it). Writes
``bench/results/tunnel.json``.

    .venv/bin/python bench/tunnel_bench.py [--mb 200] [--repeats 5] [--handshakes 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, exit_on_sigterm, finish, progress  # noqa: E402
from fanout_bench import MachineCpu  # noqa: E402

from tests.support import netns  # noqa: E402
from tests.support.agents import AgentProc  # noqa: E402
from tests.support.controller import (  # noqa: E402
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Controller,
    Http,
    free_port,
)
from tests.support.netns import Host, Lab  # noqa: E402
from tunnel import keys  # noqa: E402
from tunnel.config import Peer, TunnelError  # noqa: E402
from tunnel.wggo import SOCKET_DIR, WireguardGo  # noqa: E402

TARGET_MANAGED_PCT = 90.0
TARGET_HANDSHAKE_S = 2.0
RPORT = 5201  # the receivers' TCP port, in their namespaces
HUB_PORT_HAND, HUB_PORT_MANAGED = 51821, 51822  # in the hub namespace
KEEPALIVE = 25
WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
SETPRIV = shutil.which("setpriv")

RECEIVER = r"""
import json, socket, sys, threading, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
def serve(c):
    with c:
        c.settimeout(300)
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        n, t0 = 0, None
        try:
            while True:
                k = c.recv_into(mv)
                if not k:
                    break
                if t0 is None:
                    t0 = time.perf_counter()
                n += k
            t1 = time.perf_counter()
            c.sendall((json.dumps({"bytes": n, "seconds": (t1 - t0) if t0 else 0.0}) + "\n").encode())
        except OSError:
            pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

SENDER = r"""
import json, socket, sys, time
addr, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
connect_timeout, io_timeout = float(sys.argv[4]), float(sys.argv[5])
chunk = memoryview(bytes(1 << 20))
t0 = time.perf_counter()
try:
    s = socket.create_connection((addr, port), timeout=connect_timeout)
    s.settimeout(io_timeout)
    sent = 0
    while sent < total:
        n = min(len(chunk), total - sent)
        s.sendall(chunk[:n])
        sent += n
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while not reply.endswith(b"\n"):
        d = s.recv(4096)
        if not d:
            break
        reply += d
    s.close()
    out = json.loads(reply)
except (OSError, ValueError) as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.exit(2)
out["sender_s"] = time.perf_counter() - t0
out["sent"] = sent
print(json.dumps(out))
"""


def py(*args: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", *args]


def in_ns(host: Host | None, argv: list[str]) -> list[str]:
    return host.cmd(*argv) if host is not None else argv


def guarded(argv: list[str]) -> list[str]:
    """``argv`` under ``setpriv --pdeathsig KILL``: it dies with this process even on kill -9."""
    return [SETPRIV, "--pdeathsig", "KILL", "--", *argv] if SETPRIV else argv


def run(argv: list[str], stdin: str | None = None, timeout: float = 20) -> str:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def wg_pid(ifname: str) -> int | None:
    """The pid of the wireguard-go serving ``ifname`` (any namespace), from /proc."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a for a in argv if a]
        if len(argv) >= 2 and os.path.basename(argv[0]) == b"wireguard-go" and argv[-1] == ifname.encode():
            return int(d)
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (all threads); 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def wait_until(pred: Callable[[], bool], within: float, every: float = 0.005) -> float | None:
    """Seconds until ``pred`` held, None when it did not within ``within``."""
    t0 = time.perf_counter()
    while True:
        if pred():
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > within:
            return None
        time.sleep(every)


class Procs:
    """Processes this benchmark started: stopped (TERM, then KILL) in reverse order."""

    def __init__(self) -> None:
        self.items: list[tuple[subprocess.Popen[Any], bool]] = []

    def start(self, argv: list[str], group: bool = False, **kw: Any) -> subprocess.Popen[Any]:
        p = subprocess.Popen(argv, start_new_session=group, **kw)
        self.items.append((p, group))
        return p

    def stop(self, p: subprocess.Popen[Any], group: bool = False, wait: float = 10) -> None:
        if p.poll() is None:
            try:
                if group:
                    os.killpg(p.pid, signal.SIGTERM)
                else:
                    p.terminate()
            except ProcessLookupError:
                pass
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                try:
                    if group:
                        os.killpg(p.pid, signal.SIGKILL)
                    else:
                        p.kill()
                except ProcessLookupError:
                    pass
                p.wait()

    def stop_all(self) -> None:
        for p, group in reversed(self.items):
            try:
                self.stop(p, group)
            except Exception as exc:  # noqa: BLE001 - go on with the others
                print(f"could not stop pid {p.pid}: {exc}", file=sys.stderr)


def start_receiver(procs: Procs, host: Host) -> subprocess.Popen[str]:
    p = procs.start(guarded(host.cmd(*py(RECEIVER, str(RPORT)))), group=True,
                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the receiver in {host.name} did not start")
    return p


def transfer(host: Host | None, addr: str, nbytes: int, connect_timeout: float = 5,
             io_timeout: float = 120) -> dict[str, Any]:
    r = subprocess.run(in_ns(host, py(SENDER, addr, str(RPORT), str(nbytes), str(connect_timeout),
                                      str(io_timeout))),
                       capture_output=True, text=True, timeout=io_timeout + connect_timeout + 30,
                       start_new_session=True)
    try:
        out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = {"error": f"sender exited {r.returncode}: {r.stderr.strip()[-300:]}"}
    return out


def probe(host: Host | None, addr: str, timeout: float = 0.3) -> bool:
    """One TCP connection through to the receiver (nothing sent) and its answer."""
    return "error" not in transfer(host, addr, 0, connect_timeout=timeout, io_timeout=timeout + 0.2)


# ---- the hand-configured tunnel (no Overcast code) --------------------------------------------

@dataclass
class HandEnd:
    host: Host
    ifname: str
    private_file: Path
    public: str
    address: str
    proc: subprocess.Popen[Any] | None = None


def wg_genkey(tmp: Path, name: str) -> tuple[Path, str]:
    private = run(["wg", "genkey"]).strip()
    path = tmp / f"{name}.key"
    path.touch(mode=0o600)
    path.write_text(private + "\n")
    return path, run(["wg", "pubkey"], stdin=private).strip()


def hand_start(procs: Procs, end: HandEnd) -> None:
    """wireguard-go for ``end.ifname`` in its namespace, until its socket is there."""
    sock = os.path.join(SOCKET_DIR, f"{end.ifname}.sock")
    end.proc = procs.start(guarded(end.host.cmd("wireguard-go", "-f", end.ifname)), group=True,
                           env={**os.environ, **WG_ENV}, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while not os.path.exists(sock):
        if end.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"wireguard-go for {end.ifname} did not start")
        time.sleep(0.002)


def hand_up(end: HandEnd, prefix: int, *wg_args: str) -> None:
    run(end.host.cmd("wg", "set", end.ifname, "private-key", str(end.private_file), *wg_args))
    run(["ip", "-n", end.host.name, "address", "add", f"{end.address}/{prefix}", "dev", end.ifname])
    run(["ip", "-n", end.host.name, "link", "set", end.ifname, "up"])


def hand_stop(procs: Procs, end: HandEnd) -> None:
    if end.proc is not None:
        procs.stop(end.proc, group=True)
    sock = os.path.join(SOCKET_DIR, f"{end.ifname}.sock")
    if os.path.exists(sock):
        os.unlink(sock)


def hand_handshake(end: HandEnd, peer_public: str) -> bool:
    out = subprocess.run(end.host.cmd("wg", "show", end.ifname, "latest-handshakes"),
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        k, _, v = line.partition("\t")
        if k == peer_public and v.strip() not in ("", "0"):
            return True
    return False


# ---- the world -------------------------------------------------------------------------------

@dataclass
class Path_:
    name: str
    what: str
    sender: Host | None  # None: the root namespace
    addr: str
    wg_ifs: list[str] = field(default_factory=list)


@dataclass
class World:
    tmp: Path
    lab: Lab
    hub: Host
    gw: Host
    procs: Procs
    paths: list[Path_] = field(default_factory=list)
    managed: list[WireguardGo] = field(default_factory=list)
    hand: list[HandEnd] = field(default_factory=list)
    controller: Controller | None = None
    api: Http | None = None
    gateway: subprocess.Popen[Any] | None = None
    agent: AgentProc | None = None
    private: Host | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> list[int]:
        out = [p.pid for p, _ in self.procs.items if p.poll() is None]
        if self.controller is not None and self.controller.proc is not None:
            out.append(self.controller.proc.pid)
        if self.agent is not None and self.agent.proc is not None:
            out.append(self.agent.proc.pid)
        for p in self.paths:
            out += [pid for pid in (wg_pid(i) for i in p.wg_ifs) if pid]
        return sorted(set(out))  # each once: MachineCpu adds them up


def setup_hand(w: World, n: int) -> None:
    net = f"100.97.{n}"
    hub_key, hub_pub = wg_genkey(w.tmp, "hand-hub")
    gw_key, gw_pub = wg_genkey(w.tmp, "hand-gw")
    a = HandEnd(w.hub, f"obhh{w.lab.tag}", hub_key, hub_pub, f"{net}.1")
    b = HandEnd(w.gw, f"obhg{w.lab.tag}", gw_key, gw_pub, f"{net}.2")
    w.hand += [a, b]
    hand_start(w.procs, a)
    hand_up(a, 24, "listen-port", str(HUB_PORT_HAND), "peer", b.public, "allowed-ips", f"{b.address}/32")
    hand_start(w.procs, b)
    hand_up(b, 24, "peer", a.public, "endpoint", f"{w.hub.address}:{HUB_PORT_HAND}",
            "allowed-ips", f"{a.address}/32", "persistent-keepalive", str(KEEPALIVE))
    if wait_until(lambda: hand_handshake(b, a.public), 10, 0.02) is None:
        raise RuntimeError("the hand-configured tunnel made no handshake in 10 s")
    w.paths.append(Path_("hand", "wireguard-go configured by hand (wg set, ip)", w.hub, b.address,
                         [a.ifname, b.ifname]))


def setup_managed(w: World, n: int) -> tuple[WireguardGo, str]:
    net = f"100.98.{n}"
    hub = WireguardGo(f"obmh{w.lab.tag}", w.hub.name)
    w.managed.append(hub)
    hub_private = keys.generate_private()
    hub.up()
    hub.configure(hub_private, HUB_PORT_MANAGED)
    hub.set_address(f"{net}.1/24")
    gw_private = keys.generate_private()
    hub.set_peer(Peer(keys.public_of(gw_private), [f"{net}.2/32"]))
    gw = WireguardGo(f"obmg{w.lab.tag}", w.gw.name)
    w.managed.append(gw)
    gw.up()
    gw.configure(gw_private)
    gw.set_address(f"{net}.2/24")
    hub_public = keys.public_of(hub_private)
    gw.set_peer(Peer(hub_public, [f"{net}.1/32"], f"{w.hub.address}:{HUB_PORT_MANAGED}",
                     keepalive=KEEPALIVE))
    if wait_until(lambda: gw.peers()[hub_public].last_handshake is not None, 10, 0.02) is None:
        raise RuntimeError("the managed tunnel made no handshake in 10 s")
    w.paths.append(Path_("managed", "tunnel.wggo.WireguardGo (supervised, UAPI)", w.hub, f"{net}.2",
                         [hub.name, gw.name]))
    return hub, hub_public


def hub_handshake_after(w: World, since: float) -> bool:
    """The controller's hub reports a handshake with the gateway at or after ``since``
    (Unix time, whole seconds as wg reports them)."""
    out = subprocess.run(["wg", "show", w.info["hub_if"], "latest-handshakes"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        _, _, v = line.partition("\t")
        if v.strip().isdigit() and int(v) and int(v) >= int(since):
            return True
    return False


def setup_controller(w: World, n: int, subnet: str) -> None:
    """The controller (the hub) in the root namespace, a tunnel for ``subnet`` created over
    REST, the install command run on the gateway, an agent on the private host enrolled and
    connected through the tunnel, a receiver on the private host."""
    lab, gw, tag = w.lab, w.gw, w.lab.tag
    assert w.private is not None
    tnet = f"100.99.{n}.0/24"
    hub_if, gw_if = f"obch{tag}", f"obcg{tag}"
    w.info.update(hub_if=hub_if, gw_if=gw_if, tunnel_network=tnet)
    http_port, tunnel_port = free_port(), free_port()
    env = {"OVERCAST_HTTP": f"{lab.gateway}:{http_port}",
           "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
           "OVERCAST_TUNNEL_INTERFACE": hub_if,
           "OVERCAST_TUNNEL_PORT": str(tunnel_port),
           "OVERCAST_TUNNEL_NETWORK": tnet,
           "OVERCAST_TUNNEL_ENDPOINT": f"{lab.gateway}:{tunnel_port}",
           "OVERCAST_TUNNEL_HEALTH_INTERVAL": "1"}
    c = Controller(w.tmp / "ctl", env, url=f"https://{lab.gateway}:{http_port}")
    c.http_port = http_port
    w.controller = c
    w.info["controller_env"] = env
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Bench")
    c.start(timeout=120)
    h = c.session()
    w.api = h
    r = h.post("/api/v2/tunnels", {"name": "bench", "cidrs": [subnet]})
    if r.status != 201:
        raise RuntimeError(f"POST /api/v2/tunnels answered {r.status}: {r.body}")
    t = r.body["data"]
    w.info["tunnel_id"] = t["id"]
    script = h.get("/install/tunnel.sh")
    if script.status != 200:
        raise RuntimeError(f"GET /install/tunnel.sh answered {script.status}")
    (w.tmp / "tunnel.sh").write_bytes(script.raw)
    state = w.tmp / "gwstate"
    w.info["gateway_state"] = str(state)
    shim = w.tmp / "shim"
    shim.mkdir()
    (shim / "sudo").write_text(f'#!/bin/sh\nexec "$@" --foreground --state-dir {state} '
                               f"--interface {gw_if}\n")
    os.chmod(shim / "sudo", 0o755)
    w.info["gateway_env"] = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}")
    progress("controller: running the install command on the gateway")
    t0_wall, t0 = time.time(), time.perf_counter()
    w.gateway = start_gateway(w, ["sh", "-c", t["install_command"]])
    took = wait_until(lambda: hub_handshake_after(w, t0_wall), 30, 0.01)
    if took is None:
        raise RuntimeError(f"no handshake at the hub within 30 s of the install command; "
                           f"gateway: {(w.tmp / 'gateway.log').read_text()[-2000:]}")
    w.info["install_to_hub_handshake_s"] = round(time.perf_counter() - t0, 3)
    health = wait_until(lambda: tunnel_state(w) == "up", 30, 0.1)
    w.info["install_to_health_up_s"] = round(time.perf_counter() - t0, 3) if health is not None else None
    gw_addr = wg_address(gw, gw_if)
    w.paths.append(Path_("controller_gateway", "controller hub (root namespace) to the gateway's "
                         "tunnel address; gateway from /install/tunnel.sh", None, gw_addr,
                         [hub_if, gw_if]))
    w.paths.append(Path_("controller_private", "controller hub to the private host behind the "
                         "gateway (forwarded and NATed there)", None, w.private.address,
                         [hub_if, gw_if]))
    progress("controller: enrolling an agent on the private host through the tunnel")
    agent = AgentProc(c, w.tmp / "agent", host=w.private, hostname="privbox", interval=10.0)
    w.agent = agent
    # a join token for the tunnel: its command names the controller at the hub's address
    r = h.post("/api/v2/agents/tokens", {"tunnel": "bench", "name": "bench-private"})
    if r.status != 201:
        raise RuntimeError(f"POST /api/v2/agents/tokens answered {r.status}: {r.body}")
    tok, url = str(r.body["token"]), command_controller(str(r.body["command"]))
    w.info["agent_controller_url"] = url
    e = subprocess.run(agent.argv("--controller", url, "--token", tok,
                                  "--ca-fingerprint", c.ca_fingerprint, "--enrol-only"),
                       capture_output=True, text=True, env=agent.env(), timeout=60, cwd=str(ROOT))
    if e.returncode != 0:
        raise RuntimeError(f"the agent could not enrol through the tunnel: {e.stderr[-800:]}")
    agent.start()
    w.info["agent_id"] = agent.agent_id
    if wait_until(lambda: agent_state(w)[0], 60, 0.1) is None:
        raise RuntimeError(f"the agent did not connect through the tunnel in 60 s: "
                           f"{agent.log_path.read_text()[-1500:]}")
    w.info["agent_grpc_endpoint"] = json.loads((w.tmp / "agent" / "agent.json").read_text()).get(
        "grpc_endpoint")


def command_controller(command: str) -> str:
    """The ``--controller URL`` of a join token's command."""
    m = re.search(r"--controller (\S+)", command)
    if m is None:
        raise RuntimeError(f"no --controller in the join command: {command}")
    return m.group(1).strip("'\"")


def start_gateway(w: World, argv: list[str]) -> subprocess.Popen[Any]:
    log = open(w.tmp / "gateway.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        return w.procs.start(w.gw.cmd(*argv), group=True, env=w.info["gateway_env"],
                             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def wg_address(host: Host, ifname: str) -> str:
    out = json.loads(run(["ip", "-n", host.name, "-j", "-4", "address", "show", "dev", ifname]))
    return str(out[0]["addr_info"][0]["local"])


def tunnel_state(w: World) -> str:
    assert w.api is not None
    r = w.api.get(f"/api/v2/tunnels/{w.info['tunnel_id']}")
    return str(((r.body or {}).get("data") or {}).get("health", {}).get("state")) if r.status == 200 else ""


def agent_state(w: World) -> tuple[bool, str]:
    assert w.api is not None
    r = w.api.get(f"/api/v2/agents/{w.info['agent_id']}")
    d = (r.body or {}).get("data") or {} if r.status == 200 else {}
    return bool(d.get("connected")), str(d.get("connected_since") or "")


# ---- measurements ----------------------------------------------------------------------------

def throughput(w: World, nbytes: int, warmup_bytes: int, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {p.name: {"what": p.what, "to": p.addr,
                                    "from": p.sender.name if p.sender else "root namespace",
                                    "trials": []} for p in w.paths}
    progress(f"throughput: warm-up ({warmup_bytes / 1e6:g} MB per path)")
    for p in w.paths:
        r = transfer(p.sender, p.addr, warmup_bytes)
        if "error" in r:
            raise RuntimeError(f"warm-up through {p.name} failed: {r['error']}")
    for i in range(repeats):
        for p in w.paths:
            pids = [wg_pid(x) for x in p.wg_ifs]
            c0 = [cpu_s(x) for x in pids]
            machine = MachineCpu(w.pids())
            r = transfer(p.sender, p.addr, nbytes)
            m = machine.read()
            trial: dict[str, Any] = {"round": i + 1, "others_cpu_s": m["others_cpu_s"],
                                     "machine_busy_pct": m["busy_pct_of_machine"]}
            if "error" in r or r.get("bytes") != nbytes or not r.get("seconds"):
                trial["error"] = r.get("error") or f"received {r.get('bytes')} of {nbytes} bytes"
            else:
                trial.update(mb_per_s=round(nbytes / r["seconds"] / 1e6, 1),
                             receiver_s=round(r["seconds"], 3), sender_s=round(r["sender_s"], 3))
                if pids:
                    trial["wireguard_go_cpu_s"] = round(sum(cpu_s(x) for x in pids) - sum(c0), 2)
            out[p.name]["trials"].append(trial)
            progress(f"throughput round {i + 1}/{repeats} {p.name}: "
                     + (f"{trial['mb_per_s']} MB/s" if "mb_per_s" in trial else trial["error"])
                     + f" (other processes {m['others_cpu_s']} CPU-s)")
    for p in w.paths:
        d = out[p.name]
        rates = [t["mb_per_s"] for t in d["trials"] if "mb_per_s" in t]
        d["mb_per_s"] = rates
        d["median_mb_per_s"] = median(rates)
        d["median_mbit_per_s"] = round(d["median_mb_per_s"] * 8, 0) if rates else None
        cpu = [t["wireguard_go_cpu_s"] for t in d["trials"] if "wireguard_go_cpu_s" in t]
        if cpu:
            d["wireguard_go_cpu_s_per_gb"] = round(statistics.median(cpu) / (nbytes / 1e9), 2)
    return out


def ratios(tp: dict[str, Any]) -> dict[str, Any]:
    def pct(a: str, b: str) -> float | None:
        x, y = (tp.get(a) or {}).get("median_mb_per_s"), (tp.get(b) or {}).get("median_mb_per_s")
        return round(100 * x / y, 1) if x and y else None

    def per_round(a: str, b: str) -> list[float]:
        ta, tb = (tp.get(a) or {}).get("trials", []), (tp.get(b) or {}).get("trials", [])
        return [round(100 * x["mb_per_s"] / y["mb_per_s"], 1) for x, y in zip(ta, tb, strict=False)
                if x.get("mb_per_s") and y.get("mb_per_s")]

    rounds = per_round("managed", "hand")
    return {"managed_vs_hand_pct": pct("managed", "hand"),
            # each round's managed / hand (the two ran seconds apart): a second view on noise
            "managed_vs_hand_pct_per_round": rounds,
            "managed_vs_hand_pct_median_of_rounds": median(rounds),
            "managed_vs_veth_pct": pct("managed", "veth"),
            "hand_vs_veth_pct": pct("hand", "veth"),
            "controller_gateway_vs_hand_pct": pct("controller_gateway", "hand"),
            "controller_private_vs_hand_pct": pct("controller_private", "hand"),
            "controller_private_vs_veth_pct": pct("controller_private", "veth")}


def handshakes_managed(w: World, hub: WireguardGo, hub_public: str, n: int,
                       times: int) -> dict[str, Any]:
    """A new gateway interface (WireguardGo) per trial, the hub told its key first."""
    trials = []
    for i in range(times):
        private = keys.generate_private()
        public = keys.public_of(private)
        addr = f"100.98.{n}.{10 + i}"
        hub.set_peer(Peer(public, [f"{addr}/32"]))
        gw = WireguardGo(f"obms{w.lab.tag}", w.gw.name)
        w.managed.append(gw)
        try:
            t0 = time.perf_counter()
            gw.up()
            t_up = time.perf_counter()
            gw.configure(private)
            gw.set_address(f"{addr}/32")
            gw.set_peer(Peer(hub_public, [f"100.98.{n}.1/32"], f"{w.hub.address}:{HUB_PORT_MANAGED}",
                             keepalive=KEEPALIVE))
            t_cfg = time.perf_counter()
            took = wait_until(lambda g=gw: g.peers()[hub_public].last_handshake is not None, 10, 0.002)
            trials.append({"handshake_s": round(took + t_cfg - t0, 4) if took is not None else None,
                           "up_s": round(t_up - t0, 4), "configured_s": round(t_cfg - t0, 4)})
        finally:
            gw.down()
            w.managed.remove(gw)
            hub.remove_peer(public)
    vals = [t["handshake_s"] for t in trials if t["handshake_s"] is not None]
    return {"trials": trials, "median_s": median(vals), "max_s": max(vals) if vals else None,
            "failed": sum(1 for t in trials if t["handshake_s"] is None),
            "how": "up() (wireguard-go started, its socket answering), configure(key), "
                   "set_address, set_peer(hub, endpoint, keepalive 25) -> peers() polled every "
                   "2 ms until the hub's last_handshake is set"}


def handshakes_hand(w: World, times: int) -> dict[str, Any]:
    hub = w.hand[0]
    trials = []
    for i in range(times):
        key, public = wg_genkey(w.tmp, f"hand-hs{i}")
        addr = f"100.97.{w.info['n']}.{10 + i}"
        run(hub.host.cmd("wg", "set", hub.ifname, "peer", public, "allowed-ips", f"{addr}/32"))
        end = HandEnd(w.gw, f"obhs{w.lab.tag}", key, public, addr)
        try:
            t0 = time.perf_counter()
            hand_start(w.procs, end)
            t_up = time.perf_counter()
            hand_up(end, 32, "peer", hub.public, "endpoint", f"{w.hub.address}:{HUB_PORT_HAND}",
                    "allowed-ips", f"{hub.address}/32", "persistent-keepalive", str(KEEPALIVE))
            t_cfg = time.perf_counter()
            took = wait_until(lambda e=end: hand_handshake(e, hub.public), 10, 0.002)
            trials.append({"handshake_s": round(took + t_cfg - t0, 4) if took is not None else None,
                           "up_s": round(t_up - t0, 4), "configured_s": round(t_cfg - t0, 4)})
        finally:
            hand_stop(w.procs, end)
            run(hub.host.cmd("wg", "set", hub.ifname, "peer", public, "remove"))
    vals = [t["handshake_s"] for t in trials if t["handshake_s"] is not None]
    return {"trials": trials, "median_s": median(vals), "max_s": max(vals) if vals else None,
            "how": "wireguard-go started (socket there), wg set (key, peer, endpoint, "
                   "keepalive 25), ip address add, ip link set up -> wg show latest-handshakes "
                   "polled until set"}


def kill9_managed(w: World, times: int) -> dict[str, Any]:
    """kill -9 of the managed gateway's wireguard-go; time until TCP through it works again."""
    gw = w.managed[1]
    p = next(x for x in w.paths if x.name == "managed")
    trials = []
    for _ in range(times):
        if wait_until(lambda: probe(p.sender, p.addr), 10, 0.05) is None:
            raise RuntimeError("the managed tunnel does not carry TCP before the kill")
        old, restarts = gw.pid, gw.restarts
        assert old is not None
        t0 = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        restarted = wait_until(lambda r=restarts, o=old: gw.restarts > r and gw.pid not in (None, o),
                               15, 0.002)
        back = wait_until(lambda: probe(p.sender, p.addr), 30, 0.0)
        again = time.perf_counter() - t0
        trials.append({"restarted_s": round(restarted, 3) if restarted is not None else None,
                       "tcp_again_s": round(again, 3) if back is not None else None})
        progress(f"kill -9 of the managed gateway's wireguard-go: restarted after "
                 f"{trials[-1]['restarted_s']} s, TCP through it again after "
                 f"{trials[-1]['tcp_again_s']} s")
        time.sleep(1)
    vals = [t["tcp_again_s"] for t in trials if t["tcp_again_s"] is not None]
    return {"trials": trials, "median_tcp_again_s": median(vals),
            "how": "SIGKILL to the gateway side's wireguard-go; the supervisor thread starts "
                   "another and applies key, peer, address again; probes (a TCP connection "
                   "from the hub host to the receiver, 0.3 s connect timeout) back to back"}


def run_command(w: World, timeout: float) -> dict[str, Any]:
    assert w.api is not None
    r = w.api.post("/api/v2/commands", {"command": "true", "machine": w.info["agent_id"],
                                        "timeout": 20})
    if r.status != 202:
        return {"status": f"http {r.status}", "error": str(r.body)[:200]}
    job_id = r.body["job_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        g = w.api.get(f"/api/v2/jobs/{job_id}")
        job = (g.body or {}).get("data") or {}
        if job.get("status") not in (None, "queued", "running"):
            targets = (job.get("result") or {}).get("targets") or [{}]
            return {"status": job["status"], "via": targets[0].get("via"),
                    "error": targets[0].get("error")}
        time.sleep(0.02)
    return {"status": "timeout"}


def gateway_restarts(w: World, times: int) -> dict[str, Any]:
    """kill -9 of the gateway's wireguard-go (install script), the script exits, started
    again at once as its unit would; time until the hub's handshake and until a command
    through the agent on the private host answers."""
    assert w.api is not None and w.gateway is not None
    gw_if = w.info["gw_if"]
    script, state = str(w.tmp / "tunnel.sh"), w.info["gateway_state"]
    trials = []
    for i in range(times):
        before = run_command(w, 30)
        connected, since0 = agent_state(w)
        if before["status"] != "succeeded" or not connected:
            raise RuntimeError(f"the agent does not answer before restart {i + 1}: {before}")
        pid = wg_pid(gw_if)
        if pid is None:
            raise RuntimeError("the gateway's wireguard-go is not running")
        t0_wall, t0 = time.time(), time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        trial: dict[str, Any] = {}
        try:
            w.gateway.wait(15)
            trial["script_exit_s"] = round(time.perf_counter() - t0, 3)
            trial["script_exit_code"] = w.gateway.returncode
        except subprocess.TimeoutExpired:
            trial["script_exit_s"] = None
            w.procs.stop(w.gateway, group=True)
        w.gateway = start_gateway(w, ["sh", script, "--up", "--foreground", "--state-dir", state])
        trial["restarted_s"] = round(time.perf_counter() - t0, 3)
        hs: dict[str, float | None] = {}

        def watch_handshake(hs: dict[str, float | None] = hs, since: float = t0_wall,
                            t0: float = t0) -> None:
            took = wait_until(lambda: hub_handshake_after(w, since), 30, 0.01)
            hs["s"] = round(time.perf_counter() - t0, 3) if took is not None else None

        th = threading.Thread(target=watch_handshake, daemon=True)
        th.start()
        attempts, answered = 0, None
        while time.perf_counter() - t0 < 90:
            attempts += 1
            res = run_command(w, 30)
            if res["status"] == "succeeded":
                answered = round(time.perf_counter() - t0, 3)
                trial["via"] = res.get("via")
                break
            trial.setdefault("failed_attempts", []).append(res)
            time.sleep(0.1)
        th.join(35)
        connected, since = agent_state(w)
        trial.update(hub_handshake_s=hs.get("s"), agent_command_answered_s=answered,
                     command_attempts=attempts, agent_connected=connected,
                     agent_stream="reconnected" if since != since0 else "kept")
        trials.append(trial)
        progress(f"gateway restart {i + 1}/{times}: script exited after {trial['script_exit_s']} s, "
                 f"hub handshake after {trial['hub_handshake_s']} s, a command through the "
                 f"agent answered after {answered} s (stream {trial['agent_stream']})")
        time.sleep(2)
    ans = [t["agent_command_answered_s"] for t in trials if t["agent_command_answered_s"] is not None]
    hsv = [t["hub_handshake_s"] for t in trials if t["hub_handshake_s"] is not None]
    return {"trials": trials, "median_agent_command_answered_s": median(ans),
            "median_hub_handshake_s": median(hsv),
            "how": "SIGKILL to the gateway's wireguard-go; the install script (foreground) sees "
                   "it end, removes its interface and NAT rules and exits 1; the benchmark starts "
                   "'sh tunnel.sh --up --foreground --state-dir DIR' at once (what the systemd "
                   "unit runs, after RestartSec=2); then POST /api/v2/commands {command: true} "
                   "to the agent's machine, again until one succeeds; times from the kill"}


# ---- the run ---------------------------------------------------------------------------------

def tools_missing(controller: bool) -> str | None:
    need = ["ip", "wireguard-go", "wg"] + (["curl", "iptables"] if controller else [])
    for t in need:
        if shutil.which(t) is None:
            return f"{t} is not installed"
    return netns.available()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    missing = tools_missing(False)
    if missing:
        raise SystemExit(f"cannot run: {missing}")
    controller_why = tools_missing(True)
    if controller_why is None and args.no_controller:
        controller_why = "--no-controller"
    if controller_why is None and not (ROOT / "controller" / "tunnels" / "install.sh").exists():
        controller_why = "the controller has no tunnels yet (controller/tunnels/)"
    nbytes, warm = int(args.mb * 1e6), int(args.warmup_mb * 1e6)
    n = random.randint(10, 19)  # the lab's 10.<n>.0.0/24: the tests take 20-249
    m = random.randint(10, 250)
    subnet = f"172.31.{m}.0/24"
    out: dict[str, Any] = {"params": {
        "mb": args.mb, "warmup_mb": args.warmup_mb, "repeats": args.repeats,
        "handshakes": args.handshakes, "kills": args.kills, "restarts": args.restarts,
        "write_size": 1 << 20, "socket_buffers": "kernel autotuning",
        "sessions": "every data-path process (senders, receivers, each wireguard-go) in its own "
                    "session, as Overcast starts wireguard-go",
        "sched_autogroup_enabled": read_text("/proc/sys/kernel/sched_autogroup_enabled"),
        "direction": "hub side -> gateway side (and the private host behind it)",
        "keepalive_s": KEEPALIVE, "lab_subnet": f"10.{n}.0.0/24", "private_subnet": subnet,
        "wireguard_go": wg_version()}}
    tmp = Path(tempfile.mkdtemp(prefix="oc-tunnel-bench-"))
    os.chmod(tmp, 0o755)
    procs = Procs()
    try:
        with Lab(subnet=n) as lab:
            hub_host, gw_host = lab.add_host(), lab.add_host()
            w = World(tmp, lab, hub_host, gw_host, procs)
            w.info["n"] = n
            try:
                start_receiver(procs, gw_host)
                w.paths.append(Path_("veth", "plain veth over the lab bridge, no tunnel", hub_host,
                                     gw_host.address))
                progress(f"lab 10.{n}.0.0/24: hub host {hub_host.name}, gateway host {gw_host.name}")
                progress("hand-configured tunnel (wireguard-go + wg set + ip)")
                setup_hand(w, n)
                progress("managed tunnel (tunnel.wggo.WireguardGo)")
                hub, hub_public = setup_managed(w, n)
                if controller_why is None:
                    w.private = lab.add_private(gw_host, subnet)
                    start_receiver(procs, w.private)
                    progress("controller as the hub, gateway from its install script, an agent "
                             "on the private host")
                    setup_controller(w, n, subnet)
                    out["controller"] = {k: w.info.get(k) for k in (
                        "install_to_hub_handshake_s", "install_to_health_up_s", "tunnel_network",
                        "agent_controller_url", "agent_grpc_endpoint")}
                else:
                    out["controller"] = {"not_run": controller_why}
                    progress(f"no controller path: {controller_why}")
                out["throughput"] = throughput(w, nbytes, warm, args.repeats)
                out["ratios"] = ratios(out["throughput"])
                progress(f"first handshake, managed: {args.handshakes} new gateways")
                out["first_handshake_managed"] = handshakes_managed(w, hub, hub_public, n,
                                                                    args.handshakes)
                progress(f"first handshake, by hand: {args.handshakes} new gateways")
                out["first_handshake_hand"] = handshakes_hand(w, args.handshakes)
                progress(f"kill -9 recovery, managed: {args.kills} times")
                out["kill9_recovery_managed"] = kill9_managed(w, args.kills)
                if controller_why is None:
                    progress(f"gateway restarts with an agent behind it: {args.restarts} times")
                    out["gateway_restart_agent"] = gateway_restarts(w, args.restarts)
                    assert w.controller is not None and w.controller.proc is not None
                    out["controller"]["tunnel_state_at_end"] = tunnel_state(w)
            except BaseException:
                for label, p in (("controller", w.controller.log_path if w.controller else None),
                                 ("gateway", tmp / "gateway.log"),
                                 ("agent", w.agent.log_path if w.agent else None)):
                    if p is not None and p.exists():
                        tail = p.read_text(errors="replace").splitlines()[-25:]
                        print(f"{label} log (last lines):\n" + "\n".join(tail), file=sys.stderr)
                raise
            finally:
                teardown(w, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["targets"] = targets(out)
    return out


def teardown(w: World, out: dict[str, Any]) -> None:
    """Agent, gateway script, controller, interfaces, receivers; then the Lab removes the
    namespaces. Each step is tried even when one before failed."""
    steps: list[Callable[[], None]] = []
    if w.agent is not None:
        agent = w.agent
        steps.append(lambda: None if agent.stop() else None)
    if w.gateway is not None:
        steps.append(lambda: w.procs.stop(w.gateway, group=True))  # type: ignore[arg-type]
    if w.controller is not None and w.controller.proc is not None:
        def stop_controller() -> None:
            assert w.controller is not None and w.controller.proc is not None
            if w.controller.proc.poll() is None:
                out.setdefault("controller", {})["exit_code"] = w.controller.stop(timeout=60)
        steps.append(stop_controller)
    for iface in list(w.managed):
        steps.append(iface.down)
    for end in w.hand:
        steps.append(lambda e=end: hand_stop(w.procs, e))
    steps.append(w.procs.stop_all)
    for step in steps:
        try:
            step()
        except (OSError, TunnelError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"teardown: {exc}", file=sys.stderr)
    left = [i for p in w.paths for i in p.wg_ifs if wg_pid(i)]
    if left:
        print(f"teardown: wireguard-go still running for {left}", file=sys.stderr)


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def wg_version() -> str:
    try:
        return subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True,
                              timeout=5).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def targets(r: dict[str, Any]) -> dict[str, Any]:
    ratio = (r.get("ratios") or {}).get("managed_vs_hand_pct")
    hs = (r.get("first_handshake_managed") or {}).get("median_s")
    return {
        "managed_vs_hand_throughput_pct": {"target": f">= {TARGET_MANAGED_PCT:g}", "value": ratio,
                                           "met": ratio is not None and ratio >= TARGET_MANAGED_PCT},
        "first_handshake_s": {"target": f"< {TARGET_HANDSHAKE_S:g}", "value": hs,
                              "met": hs is not None and hs < TARGET_HANDSHAKE_S},
    }


def summary(r: dict[str, Any]) -> list[str]:
    tp, ra = r.get("throughput") or {}, r.get("ratios") or {}
    lines = []
    if tp:
        parts = [f"{k} {v['median_mb_per_s']}" for k, v in tp.items()]
        lines.append(f"TCP throughput, median of {r['params']['repeats']} x {r['params']['mb']:g} MB "
                     f"(MB/s): " + ", ".join(parts))
        lines.append(f"managed / hand {ra.get('managed_vs_hand_pct')} %; hand / veth "
                     f"{ra.get('hand_vs_veth_pct')} %; managed / veth {ra.get('managed_vs_veth_pct')} %"
                     + (f"; controller to private host / hand {ra.get('controller_private_vs_hand_pct')} %"
                        if ra.get("controller_private_vs_hand_pct") is not None else ""))
    hm, hh = r.get("first_handshake_managed") or {}, r.get("first_handshake_hand") or {}
    if hm:
        c = r.get("controller") or {}
        lines.append(f"wireguard-go start to first handshake: managed median {hm.get('median_s')} s "
                     f"(max {hm.get('max_s')}), by hand {hh.get('median_s')} s"
                     + (f"; controller install command to the hub's handshake "
                        f"{c.get('install_to_hub_handshake_s')} s" if "install_to_hub_handshake_s" in c
                        else ""))
    k = r.get("kill9_recovery_managed") or {}
    if k:
        lines.append(f"kill -9 of the managed gateway's wireguard-go to TCP through it again: "
                     f"median {k.get('median_tcp_again_s')} s")
    g = r.get("gateway_restart_agent") or {}
    if g:
        streams = sorted({t.get("agent_stream") for t in g.get("trials", [])})
        lines.append(f"gateway wireguard-go kill -9 + restart (install script) to a command through "
                     f"the agent behind it answered: median {g.get('median_agent_command_answered_s')} s "
                     f"(hub handshake {g.get('median_hub_handshake_s')} s; agent stream "
                     f"{'/'.join(str(s) for s in streams)})")
    elif "not_run" in (r.get("controller") or {}):
        lines.append(f"controller path not run: {r['controller']['not_run']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0, help="MB (10^6 bytes) per transfer")
    ap.add_argument("--warmup-mb", type=float, default=20.0, help="unmeasured transfer per path")
    ap.add_argument("--repeats", type=int, default=5, help="measured transfers per path")
    ap.add_argument("--handshakes", type=int, default=5, help="first-handshake trials")
    ap.add_argument("--kills", type=int, default=3, help="kill -9 trials (managed)")
    ap.add_argument("--restarts", type=int, default=3, help="gateway restarts (controller)")
    ap.add_argument("--no-controller", action="store_true", help="skip the controller path")
    a = ap.parse_args(argv)
    exit_on_sigterm()
    result = bench(a)
    finish("tunnel", result, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
