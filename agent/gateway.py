"""The agent as a tunnel's WireGuard gateway: what the install script does on a gateway host
(controller/tunnels/install.sh), done on the controller's word (TunnelUp, TunnelDown on the
stream).

For each tunnel: a WireGuard key made here (0600 in ``<state dir>/tunnels/<id>.key``; only
its public half is sent), the interface (``tunnel.backend.choose``: the kernel module where
present, else wireguard-go) with the gateway's address and the hub as its one peer
(persistent keepalive: the gateway dials out), forwarding, and ``MASQUERADE`` from the hub's
address to each IPv4 CIDR and from the hub's IPv6 twin (``tunnel.addressing.ipv6_twin``) to
each IPv6 CIDR (iptables and ip6tables, checked with ``-C`` first; removed on down). The
tunnel's configuration is kept next to its key (``<id>.json``): the agent brings it up again
when it starts, and keeps it up while the controller is away (other hosts' traffic goes
through it). When the agent stops, its interfaces and NAT rules go (wireguard-go dies with
the agent anyway); the stored configuration and key stay for the next start.

Key rotation (TunnelUp with ``rotate``) is two steps, so that the tunnel is lost for about a
handshake: a new key pair replaces the stored one (the old private key is forgotten) and its
public half is reported while the interface still runs the old key; the next TunnelUp (the
controller sends it once the hub has the new key) switches the interface to it and sends the
hub a packet, which starts the handshake at once.

Imported only when a tunnel is asked for, or one is stored: an idle agent does not load the
``tunnel`` package. Needs root; otherwise every TunnelUp is answered with an error."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.state import write_atomic
from overcast.agent.v1 import agent_pb2 as pb

if TYPE_CHECKING:
    from tunnel.backend import Interface
    from tunnel.link import Runner

# The tunnel package is imported inside the functions: agent modules import only light
# dependencies at load time (tests/agent/test_state.py), and this one is loaded only by an
# agent that is, or is asked to be, a gateway.

log = logging.getLogger(__name__)

FIELDS = ("tunnel_id", "interface", "address", "hub_public_key", "hub_endpoint", "hub_address",
          "cidrs", "keepalive")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FORWARDING = "/proc/sys/net/ipv4/ip_forward"
FORWARDING6 = "/proc/sys/net/ipv6/conf/all/forwarding"
DISCARD_PORT = 9  # where the packet that starts a handshake goes (RFC 863: nobody answers)


def config_of(msg: pb.TunnelUp) -> dict[str, Any]:
    """The stored form of a TunnelUp, checked. Raises ValueError in words."""
    from tunnel import addressing, keys
    from tunnel.config import Peer, check_name

    if not _ID.match(msg.tunnel_id):
        raise ValueError(f"tunnel id {msg.tunnel_id[:70]!r} is not valid")
    check_name(msg.interface)
    if not keys.is_key(msg.hub_public_key):
        raise ValueError("the hub's public key is not a WireGuard key")
    ipaddress.ip_interface(msg.address)
    hub = ipaddress.ip_address(msg.hub_address)
    cidrs = [str(ipaddress.ip_network(c)) for c in msg.cidrs]
    # IPv6 CIDRs are reached from the hub's IPv6 twin, derived from what both ends know
    hub6 = ""
    if hub.version == 4 and any(ipaddress.ip_network(c).version == 6 for c in cidrs):
        hub6 = addressing.ipv6_twin(str(hub), msg.hub_public_key)
    cfg: dict[str, Any] = {
        "tunnel_id": msg.tunnel_id, "interface": msg.interface, "address": msg.address,
        "hub_public_key": msg.hub_public_key, "hub_endpoint": msg.hub_endpoint,
        "hub_address": str(hub), "hub_address6": hub6, "cidrs": cidrs,
        "keepalive": int(msg.keepalive or 25)}
    Peer(cfg["hub_public_key"], hub_ips(cfg), cfg["hub_endpoint"] or None,
         cfg["keepalive"])  # raises ValueError on a bad endpoint
    return cfg


def _host(address: str) -> str:
    a = ipaddress.ip_address(address)
    return f"{a}/{a.max_prefixlen}"


def hub_ips(cfg: dict[str, Any]) -> list[str]:
    """The hub peer's allowed IPs (and the routes to it): its address, and its IPv6 twin
    when the tunnel routes IPv6."""
    return [_host(a) for a in (cfg["hub_address"], cfg.get("hub_address6", "")) if a]


def nat_rules(cfg: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(iptables or ip6tables, the arguments after ``-A``/``-C``/``-D``) of a tunnel's NAT:
    from the hub's address of each CIDR's family to that CIDR; none for a family the hub
    has no address of."""
    source = {ipaddress.ip_address(a).version: a
              for a in (cfg["hub_address"], cfg.get("hub_address6", "")) if a}
    rules = []
    for c in cfg["cidrs"]:
        version = ipaddress.ip_network(c).version
        if version in source:
            rules.append(("iptables" if version == 4 else "ip6tables",
                          ["POSTROUTING", "-s", source[version], "-d", c, "-j", "MASQUERADE"]))
    return rules


def send_to_hub(address: str) -> None:
    """One empty UDP datagram to the hub's tunnel ``address``: WireGuard starts a handshake
    on the first packet it has to send, and after a key change there is no session (the
    next keepalive may be 25 s away). Errors are ignored: the keepalive comes anyway."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(b"", (address, DISCARD_PORT))


@dataclass
class _Running:
    iface: Interface
    cfg: dict[str, Any]
    public: str  # the public half of the key the interface runs with


class Gateways:
    """The tunnels this agent is the gateway of. Every operation runs one at a time; the
    blocking parts (``ip``, ``iptables``, wireguard-go) in a worker thread."""

    def __init__(self, state_dir: Path, send_up: Callable[[pb.AgentMessage], Awaitable[None]],
                 backend: Callable[[str], Interface] | None = None, runner: Runner | None = None,
                 is_root: Callable[[], bool] = lambda: os.geteuid() == 0,
                 forwarding: str = FORWARDING, forwarding6: str = FORWARDING6,
                 nudge: Callable[[str], None] = send_to_hub) -> None:
        from tunnel import backend as backends
        from tunnel import keys
        from tunnel.config import Peer, TunnelError
        from tunnel.link import run

        self.keys, self.Peer, self.Error = keys, Peer, TunnelError
        self.directory = Path(state_dir) / "tunnels"
        self.send_up = send_up
        self.backend = backend or backends.choose
        self.runner = runner or run
        self.is_root = is_root
        self.forwarding = forwarding
        self.forwarding6 = forwarding6
        self.nudge = nudge
        self._up: dict[str, _Running] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- what the controller says ----------------------------------------------------------
    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` as a task of its own (the stream's read loop never waits on it)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _status(self, tunnel_id: str, public: str = "", up: bool = False, error: str = "") -> None:
        await self.send_up(pb.AgentMessage(tunnel_status=pb.TunnelStatus(
            tunnel_id=tunnel_id, public_key=public, up=up, error=error)))

    async def up(self, msg: pb.TunnelUp) -> None:
        """Bring the tunnel up (or in line with ``msg``) and answer TunnelStatus: a key made
        now is sent first (the controller gives it to the hub before this side dials), then
        up or the error. With ``rotate``: a new key, sent while the interface keeps the old
        one until the next TunnelUp (see the module's docstring)."""
        tid = msg.tunnel_id
        async with self._lock:
            try:
                if not self.is_root():
                    raise self.Error("the agent does not run as root: it cannot be a tunnel gateway")
                try:
                    cfg = config_of(msg)
                except ValueError as e:
                    raise self.Error(f"bad tunnel configuration: {e}") from None
                private, made = await asyncio.to_thread(self._key, tid, True, msg.rotate)
                public = self.keys.public_of(private)
                await asyncio.to_thread(self._store, cfg)
                running = self._up.get(tid)
                if made and running is not None and running.public != public:
                    log.info("tunnel %s: a new key made; the interface keeps the old one until "
                             "the hub has the new one", tid)
                    await self._status(tid, public)
                    return
                if made:
                    await self._status(tid, public)
                await asyncio.to_thread(self._apply, cfg, private, public)
            except (self.Error, OSError) as e:
                log.warning("tunnel %s: cannot be its gateway: %s", tid[:70], e)
                await self._status(tid, error=str(e) or type(e).__name__)
                return
            log.info("tunnel %s up on %s (%s), dialling the hub at %s", tid, cfg["interface"],
                     cfg["address"], cfg["hub_endpoint"])
            await self._status(tid, public, up=True)

    async def down(self, tunnel_id: str) -> None:
        """Take the tunnel down and forget it (configuration and key). Idempotent."""
        if not _ID.match(tunnel_id):
            return
        async with self._lock:
            await asyncio.to_thread(self._remove, tunnel_id, True)
            log.info("tunnel %s down", tunnel_id)

    async def restore(self) -> None:
        """Bring up every stored tunnel (the agent started). Errors are logged."""
        async with self._lock:
            for cfg in await asyncio.to_thread(self.stored):
                try:
                    private, _ = await asyncio.to_thread(self._key, cfg["tunnel_id"], False)
                    await asyncio.to_thread(self._apply, cfg, private, self.keys.public_of(private))
                    log.info("tunnel %s up again on %s", cfg["tunnel_id"], cfg["interface"])
                except (self.Error, OSError, ValueError, KeyError) as e:
                    log.warning("tunnel %s: could not be brought up again: %s",
                                cfg.get("tunnel_id"), e)

    async def report(self) -> None:
        """Tell the controller (a new stream) which tunnels this agent is the gateway of, with
        the stored key; up only when the interface runs that key."""
        async with self._lock:
            for cfg in await asyncio.to_thread(self.stored):
                tid = cfg["tunnel_id"]
                with contextlib.suppress(OSError, self.Error, ValueError):
                    private, _ = await asyncio.to_thread(self._key, tid, False)
                    public = self.keys.public_of(private)
                    running = self._up.get(tid)
                    await self._status(tid, public, up=running is not None and running.public == public)

    async def close(self) -> None:
        """The agent stops: interfaces down, NAT rules removed; configuration and keys kept."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._lock:
            for tid in list(self._up):
                await asyncio.to_thread(self._remove, tid, False)

    # ---- blocking parts --------------------------------------------------------------------
    def stored(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else ():
            try:
                cfg = json.loads(p.read_text())
            except (OSError, ValueError):
                log.warning("%s is not readable: skipped", p)
                continue
            if isinstance(cfg, dict) and all(k in cfg for k in FIELDS) and _ID.match(str(cfg["tunnel_id"])):
                out.append(cfg)
        return out

    def _key(self, tunnel_id: str, make: bool = True, new: bool = False) -> tuple[str, bool]:
        """(the tunnel's private key, whether it was made now): the stored one, else
        (``make``) a new one, stored 0600; with ``new`` always a new one, which replaces the
        stored one (atomically: the old key is gone from the disk)."""
        path = self.directory / f"{tunnel_id}.key"
        if not new:
            with contextlib.suppress(FileNotFoundError):
                key = path.read_text().strip()
                if self.keys.is_key(key):
                    return key, False
            if not make:
                raise self.Error(f"the key of tunnel {tunnel_id} is missing")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.keys.generate_private()
        write_atomic(path, (key + "\n").encode(), 0o600)
        return key, True

    def _store(self, cfg: dict[str, Any]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.directory / f"{cfg['tunnel_id']}.json",
                     json.dumps(cfg, sort_keys=True).encode(), 0o600)

    def _xtables(self, tool: str, op: str, rule: Sequence[str]) -> bool:
        try:
            self.runner([tool, "-t", "nat", op, *rule], None)
            return True
        except self.Error:
            if op == "-A":
                raise
            return False

    def _nat(self, cfg: dict[str, Any], add: bool) -> None:
        for tool, rule in nat_rules(cfg):
            if add:
                if not self._xtables(tool, "-C", rule):
                    self._xtables(tool, "-A", rule)
            else:
                while self._xtables(tool, "-D", rule):  # every copy (idempotent)
                    pass

    def _forward(self, cfg: dict[str, Any]) -> None:
        """Forwarding on: IPv4 always (the script does the same), IPv6 when it is routed."""
        for path, what, wanted in ((self.forwarding, "IPv4", True),
                                   (self.forwarding6, "IPv6", bool(cfg.get("hub_address6")))):
            if not wanted:
                continue
            try:
                with open(path) as f:
                    if f.read().strip() == "1":
                        continue
                with open(path, "w") as f:  # sysctl: written at offset 0, in one write
                    f.write("1\n")
            except OSError as e:
                raise self.Error(f"cannot enable {what} forwarding: {e}") from None
            if what == "IPv6":  # a router ignores router advertisements unless accept_ra=2
                log.warning("IPv6 forwarding is on now: if this host takes its own IPv6 address "
                            "or route from router advertisements, set "
                            "net.ipv6.conf.<uplink>.accept_ra=2")

    def _apply(self, cfg: dict[str, Any], private: str, public: str) -> None:
        tid = cfg["tunnel_id"]
        old = self._up.get(tid)
        if old is not None and old.cfg["interface"] != cfg["interface"]:
            self._remove(tid, False)
            old = None
        iface = old.iface if old is not None else self.backend(cfg["interface"])
        hub = hub_ips(cfg)
        iface.configure(private)
        iface.set_address(cfg["address"])
        if old is not None and old.cfg["hub_public_key"] != cfg["hub_public_key"]:
            iface.remove_peer(old.cfg["hub_public_key"])
        iface.set_peer(self.Peer(cfg["hub_public_key"], hub, cfg["hub_endpoint"] or None,
                                 cfg["keepalive"]))
        try:
            iface.up()
        except self.Error:
            with contextlib.suppress(self.Error):
                iface.down()
            raise
        self._up[tid] = _Running(iface, cfg, public)
        for route in hub:
            iface.add_route(route)
        if old is not None:
            for route in set(hub_ips(old.cfg)) - set(hub):
                iface.remove_route(route)
        self._forward(cfg)
        if old is not None:
            gone = set(old.cfg["cidrs"]) - set(cfg["cidrs"])
            self._nat(dict(old.cfg, cidrs=sorted(gone)), add=False)
        self._nat(cfg, add=True)
        if old is not None and old.public != public:  # a new key: no session to the hub
            self.nudge(cfg["hub_address"])

    def _remove(self, tunnel_id: str, forget: bool) -> None:
        entry = self._up.pop(tunnel_id, None)
        cfg = entry.cfg if entry else None
        if cfg is None and forget:
            cfg = next((c for c in self.stored() if c["tunnel_id"] == tunnel_id), None)
        if cfg is not None:
            with contextlib.suppress(self.Error, ValueError):
                self._nat(cfg, add=False)
        if entry is not None:
            with contextlib.suppress(self.Error):
                entry.iface.down()
        if forget:
            for suffix in (".json", ".key"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{tunnel_id}{suffix}").unlink()
