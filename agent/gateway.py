"""The agent as a tunnel's WireGuard gateway: what the install script does on a gateway host
(controller/tunnels/install.sh), done on the controller's word (TunnelUp, TunnelDown on the
stream).

For each tunnel: a WireGuard key made here (0600 in ``<state dir>/tunnels/<id>.key``; only
its public half is sent), the interface (``tunnel.backend.choose``: the kernel module where
present, else wireguard-go) with the gateway's address and the hub as its one peer
(persistent keepalive: the gateway dials out), IPv4 forwarding, and ``MASQUERADE`` from the
hub's address to each IPv4 CIDR (checked with ``-C`` first; removed on down). The tunnel's
configuration is kept next to its key (``<id>.json``): the agent brings it up again when it
starts, and keeps it up while the controller is away (other hosts' traffic goes through it).
When the agent stops, its interfaces and NAT rules go (wireguard-go dies with the agent
anyway); the stored configuration and key stay for the next start.

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
from collections.abc import Awaitable, Callable, Sequence
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


def config_of(msg: pb.TunnelUp) -> dict[str, Any]:
    """The stored form of a TunnelUp, checked. Raises ValueError in words."""
    from tunnel import keys
    from tunnel.config import Peer, check_name

    if not _ID.match(msg.tunnel_id):
        raise ValueError(f"tunnel id {msg.tunnel_id[:70]!r} is not valid")
    check_name(msg.interface)
    if not keys.is_key(msg.hub_public_key):
        raise ValueError("the hub's public key is not a WireGuard key")
    ipaddress.ip_interface(msg.address)
    hub = ipaddress.ip_address(msg.hub_address)
    cidrs = [str(ipaddress.ip_network(c)) for c in msg.cidrs]
    cfg: dict[str, Any] = {
        "tunnel_id": msg.tunnel_id, "interface": msg.interface, "address": msg.address,
        "hub_public_key": msg.hub_public_key, "hub_endpoint": msg.hub_endpoint,
        "hub_address": str(hub), "cidrs": cidrs, "keepalive": int(msg.keepalive or 25)}
    Peer(cfg["hub_public_key"], [_host(cfg["hub_address"])], cfg["hub_endpoint"] or None,
         cfg["keepalive"])  # raises ValueError on a bad endpoint
    return cfg


def _host(address: str) -> str:
    a = ipaddress.ip_address(address)
    return f"{a}/{a.max_prefixlen}"


def nat_rules(cfg: dict[str, Any]) -> list[list[str]]:
    """The iptables arguments (after ``-A``/``-C``/``-D``) of a tunnel's NAT: from the hub's
    address to each IPv4 CIDR (the hub's address is IPv4: IPv6 CIDRs are not masqueraded)."""
    if ipaddress.ip_address(cfg["hub_address"]).version != 4:
        return []
    return [["POSTROUTING", "-s", cfg["hub_address"], "-d", c, "-j", "MASQUERADE"]
            for c in cfg["cidrs"] if ipaddress.ip_network(c).version == 4]


class Gateways:
    """The tunnels this agent is the gateway of. Every operation runs one at a time; the
    blocking parts (``ip``, ``iptables``, wireguard-go) in a worker thread."""

    def __init__(self, state_dir: Path, send_up: Callable[[pb.AgentMessage], Awaitable[None]],
                 backend: Callable[[str], Interface] | None = None, runner: Runner | None = None,
                 is_root: Callable[[], bool] = lambda: os.geteuid() == 0,
                 forwarding: str = FORWARDING) -> None:
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
        self._up: dict[str, tuple[Interface, dict[str, Any]]] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- what the controller says ----------------------------------------------------------
    def spawn(self, coro: Awaitable[None]) -> None:
        """Run ``coro`` as a task of its own (the stream's read loop never waits on it)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def up(self, msg: pb.TunnelUp) -> None:
        """Bring the tunnel up (or in line with ``msg``) and answer TunnelStatus: the public
        key first (the controller gives it to the hub before this side dials), then up or
        the error."""
        tid = msg.tunnel_id
        async with self._lock:
            try:
                if not self.is_root():
                    raise self.Error("the agent does not run as root: it cannot be a tunnel gateway")
                try:
                    cfg = config_of(msg)
                except ValueError as e:
                    raise self.Error(f"bad tunnel configuration: {e}") from None
                private = await asyncio.to_thread(self._key, tid)
                public = self.keys.public_of(private)
                await self.send_up(pb.AgentMessage(tunnel_status=pb.TunnelStatus(
                    tunnel_id=tid, public_key=public)))
                await asyncio.to_thread(self._store, cfg)
                await asyncio.to_thread(self._apply, cfg, private)
            except (self.Error, OSError) as e:
                log.warning("tunnel %s: cannot be its gateway: %s", tid[:70], e)
                await self.send_up(pb.AgentMessage(tunnel_status=pb.TunnelStatus(
                    tunnel_id=tid, error=str(e) or type(e).__name__)))
                return
            log.info("tunnel %s up on %s (%s), dialling the hub at %s", tid, cfg["interface"],
                     cfg["address"], cfg["hub_endpoint"])
            await self.send_up(pb.AgentMessage(tunnel_status=pb.TunnelStatus(
                tunnel_id=tid, public_key=public, up=True)))

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
                    private = await asyncio.to_thread(self._key, cfg["tunnel_id"], False)
                    await asyncio.to_thread(self._apply, cfg, private)
                    log.info("tunnel %s up again on %s", cfg["tunnel_id"], cfg["interface"])
                except (self.Error, OSError, ValueError, KeyError) as e:
                    log.warning("tunnel %s: could not be brought up again: %s",
                                cfg.get("tunnel_id"), e)

    async def report(self) -> None:
        """Tell the controller (a new stream) which tunnels this agent is the gateway of."""
        async with self._lock:
            for cfg in await asyncio.to_thread(self.stored):
                tid = cfg["tunnel_id"]
                with contextlib.suppress(OSError, self.Error, ValueError):
                    public = self.keys.public_of(await asyncio.to_thread(self._key, tid, False))
                    await self.send_up(pb.AgentMessage(tunnel_status=pb.TunnelStatus(
                        tunnel_id=tid, public_key=public, up=tid in self._up)))

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

    def _key(self, tunnel_id: str, make: bool = True) -> str:
        """The tunnel's private key: the stored one, else (``make``) a new one, stored 0600."""
        path = self.directory / f"{tunnel_id}.key"
        with contextlib.suppress(FileNotFoundError):
            key = path.read_text().strip()
            if self.keys.is_key(key):
                return key
        if not make:
            raise self.Error(f"the key of tunnel {tunnel_id} is missing")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.keys.generate_private()
        write_atomic(path, (key + "\n").encode(), 0o600)
        return key

    def _store(self, cfg: dict[str, Any]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.directory / f"{cfg['tunnel_id']}.json",
                     json.dumps(cfg, sort_keys=True).encode(), 0o600)

    def _iptables(self, op: str, rule: Sequence[str]) -> bool:
        try:
            self.runner(["iptables", "-t", "nat", op, *rule], None)
            return True
        except self.Error:
            if op == "-A":
                raise
            return False

    def _nat(self, cfg: dict[str, Any], add: bool) -> None:
        for rule in nat_rules(cfg):
            if add:
                if not self._iptables("-C", rule):
                    self._iptables("-A", rule)
            else:
                while self._iptables("-D", rule):  # every copy (idempotent)
                    pass

    def _apply(self, cfg: dict[str, Any], private: str) -> None:
        tid = cfg["tunnel_id"]
        old = self._up.get(tid)
        if old is not None and old[1]["interface"] != cfg["interface"]:
            self._remove(tid, False)
            old = None
        iface = old[0] if old is not None else self.backend(cfg["interface"])
        hub = _host(cfg["hub_address"])
        iface.configure(private)
        iface.set_address(cfg["address"])
        if old is not None and old[1]["hub_public_key"] != cfg["hub_public_key"]:
            iface.remove_peer(old[1]["hub_public_key"])
        iface.set_peer(self.Peer(cfg["hub_public_key"], [hub], cfg["hub_endpoint"] or None,
                            cfg["keepalive"]))
        try:
            iface.up()
        except self.Error:
            with contextlib.suppress(self.Error):
                iface.down()
            raise
        self._up[tid] = (iface, cfg)
        iface.add_route(hub)
        try:
            with open(self.forwarding, "w") as f:
                f.write("1\n")
        except OSError as e:
            raise self.Error(f"cannot enable IPv4 forwarding: {e}") from None
        if old is not None:
            gone = {c for c in old[1]["cidrs"]} - set(cfg["cidrs"])
            self._nat(dict(old[1], cidrs=sorted(gone)), add=False)
        self._nat(cfg, add=True)

    def _remove(self, tunnel_id: str, forget: bool) -> None:
        entry = self._up.pop(tunnel_id, None)
        cfg = entry[1] if entry else None
        if cfg is None and forget:
            cfg = next((c for c in self.stored() if c["tunnel_id"] == tunnel_id), None)
        if cfg is not None:
            with contextlib.suppress(self.Error, ValueError):
                self._nat(cfg, add=False)
        if entry is not None:
            with contextlib.suppress(self.Error):
                entry[0].down()
        if forget:
            for suffix in (".json", ".key"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{tunnel_id}{suffix}").unlink()
