"""The controller's side of every tunnel: one WireGuard interface (the hub) in the
controller's own network namespace, one peer per registered gateway, one route per CIDR a
tunnel reaches; and the controller host's own networks, which no tunnel may take.

Every method of ``Hub`` is a coroutine; the interface's calls (``ip``, ``wg``, wireguard-go's
UAPI) run in worker threads, so they block the caller for milliseconds and the event loop
never. The hub is brought up on first use and down by ``close()`` (the app's cleanup_ctx).
Raises ``TunnelsUnavailable`` (503) when this host cannot run WireGuard interfaces, with the
reason in words; ValueError for bad arguments.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import subprocess
from collections.abc import Awaitable, Callable, Iterable

from controller.tunnels.model import TunnelsUnavailable
from tunnel.backend import AsyncInterface, Interface, Peer, PeerStats, TunnelError, choose

log = logging.getLogger(__name__)

Factory = Callable[[str], Interface]


class Hub:
    """The hub interface ``name`` listening on ``port``. ``factory`` makes the interface
    (``tunnel.backend.choose`` by default; tests pass an in-memory one)."""

    def __init__(self, name: str, port: int, factory: Factory | None = None) -> None:
        self.name = name
        self.port = port
        self._factory: Factory = factory or (lambda n: choose(n))
        self._iface: AsyncInterface | None = None
        self._lock = asyncio.Lock()
        self.unavailable = ""  # why the hub could not come up, once it failed
        self.address = ""  # the hub's own tunnel address (no prefix) while it is up
        # called with the hub's address once it is up, and before it goes down (listeners on
        # that address: controller/tunnels/listeners.py); their errors are logged, not raised
        self.on_up: list[Callable[[str], Awaitable[None]]] = []
        self.on_down: list[Callable[[], Awaitable[None]]] = []

    @property
    def is_up(self) -> bool:
        return self._iface is not None

    async def up(self, private_key: str, address: str, address6: str = "") -> None:
        """Create the interface with its key, port and ``address`` (CIDR), and ``address6``
        (the IPv6 twin, a CIDR; "" for none) when this host takes it (else IPv6 CIDRs are
        not reached: logged); nothing when up. Blocks up to a few seconds (wireguard-go's
        start). Raises TunnelsUnavailable."""
        async with self._lock:
            if self._iface is not None:
                return
            try:
                iface = AsyncInterface(await asyncio.to_thread(self._factory, self.name))
                await iface.configure(private_key, self.port)
                await iface.set_address(address)
                await iface.up()
            except (TunnelError, OSError) as e:
                self.unavailable = str(e)
                log.error("the tunnel hub %s cannot come up: %s", self.name, e)
                raise TunnelsUnavailable(f"tunnels are not available on this controller: {e}") from None
            if address6:
                try:  # after up(): a host without IPv6 refuses it, and IPv4 must work anyway
                    await iface.set_address(address, address6)
                except (TunnelError, OSError) as e:
                    log.warning("the tunnel hub %s has no IPv6 address (%s): IPv6 CIDRs of "
                                "tunnels cannot be reached", self.name, e)
            self._iface = iface
            self.unavailable = ""
            self.address = str(ipaddress.ip_interface(address).ip)
            log.info("tunnel hub %s up on UDP port %d (%s)", self.name, self.port, address)
            for hook in self.on_up:
                try:
                    await hook(self.address)
                except Exception:
                    log.exception("starting a listener on the hub address %s failed", self.address)

    def _need(self) -> AsyncInterface:
        if self._iface is None:
            raise TunnelsUnavailable("the tunnel hub is not up" + (f": {self.unavailable}" if self.unavailable else ""))
        return self._iface

    async def set_gateway(self, peer: Peer, routes: Iterable[str], drop: Iterable[str] = ()) -> None:
        """Add or update a gateway's peer, route ``routes`` through the hub, stop routing
        ``drop`` (routes the tunnel no longer has). The peer is set before the routes, so
        that the first packet a route sends finds it. Raises TunnelsUnavailable, TunnelError."""
        iface = self._need()
        await iface.set_peer(peer)
        keep = set(routes)
        for cidr in drop:
            if cidr not in keep:
                await iface.remove_route(cidr)
        for cidr in keep:
            await iface.add_route(cidr)

    async def remove_gateway(self, public_key: str | None, routes: Iterable[str]) -> None:
        """Stop routing ``routes`` and remove the peer (when there is one). Nothing when the
        hub is down."""
        if self._iface is None:
            return
        for cidr in routes:
            await self._iface.remove_route(cidr)
        if public_key:
            await self._iface.remove_peer(public_key)

    async def remove_peer(self, public_key: str) -> None:
        """Remove one peer (a gateway's old key after a rotation). Nothing when down."""
        if self._iface is not None:
            await self._iface.remove_peer(public_key)

    async def peers(self) -> dict[str, PeerStats]:
        """Each peer's handshake and bytes, by public key; {} when the hub is down."""
        if self._iface is None:
            return {}
        return await self._iface.peers()

    async def close(self) -> None:
        """Remove the interface (its peers and routes go with it). Idempotent."""
        async with self._lock:
            iface, self._iface = self._iface, None
            if iface is not None:
                for hook in self.on_down:
                    try:
                        await hook()
                    except Exception:
                        log.exception("stopping a listener on the hub address failed")
            self.address = ""
        if iface is not None:
            await iface.down()


def local_networks(exclude_dev: str) -> list[str]:
    """The controller host's own networks (``ip -j addr`` and ``ip -j route`` in this
    namespace), except loopback, link-local, default routes and what goes through
    ``exclude_dev`` (the hub's own routes). Blocks for two ``ip`` runs; [] without iproute2."""
    nets: set[str] = set()
    try:
        addrs = json.loads(_ip("-j", "addr") or "[]")
        routes = json.loads(_ip("-j", "route") or "[]") + json.loads(_ip("-6", "-j", "route") or "[]")
    except (OSError, ValueError, subprocess.SubprocessError):
        return []
    for link in addrs:
        if link.get("ifname") == exclude_dev:
            continue
        for a in link.get("addr_info", []):
            try:
                nets.add(str(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network))
            except (KeyError, ValueError):
                continue
    for r in routes:
        if r.get("dev") == exclude_dev or r.get("dst") in (None, "default"):
            continue
        try:
            nets.add(str(ipaddress.ip_network(r["dst"], strict=False)))
        except ValueError:
            continue
    own = []
    for n in sorted(nets):
        net = ipaddress.ip_network(n)
        if net.is_loopback or net.is_link_local or net.is_multicast or net.prefixlen == 0:
            continue
        own.append(n)
    return own


def _ip(*args: str) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    return r.stdout if r.returncode == 0 else ""
