"""One interface for WireGuard tunnels over two backends, and the choice between them: the
kernel module where it is present (``tunnel.kernel``), wireguard-go where it is not
(``tunnel.wggo``, which supervises wireguard-go and re-applies its configuration when it
restarts).

Every ``Interface`` method blocks (milliseconds; ``up()`` up to a few seconds) and is safe to
call from any thread. Async code wraps an interface in ``AsyncInterface``, which runs each
call in a worker thread. Errors: ValueError for bad arguments, ``TunnelError`` for what fails
on the system, in words fit for users.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from typing import Protocol

from tunnel.config import Peer, PeerStats, TunnelError
from tunnel.kernel import KernelWireguard
from tunnel.link import Link, Runner, run
from tunnel.wggo import WireguardGo

__all__ = ["AsyncInterface", "Interface", "KernelWireguard", "Peer", "PeerStats", "TunnelError",
           "WireguardGo", "choose", "kernel_available"]


class Interface(Protocol):
    """A WireGuard interface. What it is told before ``up()`` is applied at ``up()``."""

    name: str
    netns: str | None

    def up(self) -> None:
        """Create the interface and bring it up; nothing when it is up. TunnelError."""

    def down(self) -> None:
        """Remove the interface; idempotent."""

    def configure(self, private_key: str, listen_port: int | None = None) -> None:
        """Set the private key (base64) and listen port (None: any)."""

    def set_peer(self, peer: Peer) -> None:
        """Add or update a peer; its allowed IPs replace those it had."""

    def remove_peer(self, public_key: str) -> None:
        """Remove a peer; nothing when there is none."""

    def set_address(self, *cidrs: str) -> None:
        """Make these the interface's addresses."""

    def add_route(self, cidr: str) -> None:
        """Route a CIDR through the interface."""

    def remove_route(self, cidr: str) -> None:
        """Stop routing a CIDR through the interface."""

    def peers(self) -> dict[str, PeerStats]:
        """Handshake, bytes and endpoint of each peer, by base64 public key."""


def kernel_available(netns: str | None = None, runner: Runner = run) -> bool:
    """True when kernel WireGuard can be used in ``netns``: ``wg`` is installed and an
    ``ip link add ... type wireguard`` works (the probe interface is removed at once)."""
    if runner is run and shutil.which("wg") is None:
        return False
    probe = Link(f"ocwgp{uuid.uuid4().hex[:8]}", netns, runner)
    try:
        probe.add_wireguard()
    except TunnelError:
        return False
    probe.delete()
    return True


def choose(name: str, netns: str | None = None) -> Interface:
    """The interface ``name`` on the kernel module when it is present, else on wireguard-go.
    Blocks for the probe (a few ms). Raises TunnelError when neither is available."""
    if kernel_available(netns):
        return KernelWireguard(name, netns)
    iface = WireguardGo(name, netns)
    if iface.binary is None:
        raise TunnelError("WireGuard is not available: no kernel module, and wireguard-go is not "
                          "installed (apt-get install wireguard-go wireguard-tools)")
    return iface


class AsyncInterface:
    """An ``Interface`` for asyncio code: each call runs in a worker thread, so the event loop
    never waits on wireguard-go, ``ip`` or ``wg``. Raises what the interface raises."""

    def __init__(self, iface: Interface) -> None:
        self.iface = iface

    @property
    def name(self) -> str:
        return self.iface.name

    async def up(self) -> None:
        await asyncio.to_thread(self.iface.up)

    async def down(self) -> None:
        await asyncio.to_thread(self.iface.down)

    async def configure(self, private_key: str, listen_port: int | None = None) -> None:
        await asyncio.to_thread(self.iface.configure, private_key, listen_port)

    async def set_peer(self, peer: Peer) -> None:
        await asyncio.to_thread(self.iface.set_peer, peer)

    async def remove_peer(self, public_key: str) -> None:
        await asyncio.to_thread(self.iface.remove_peer, public_key)

    async def set_address(self, *cidrs: str) -> None:
        await asyncio.to_thread(self.iface.set_address, *cidrs)

    async def add_route(self, cidr: str) -> None:
        await asyncio.to_thread(self.iface.add_route, cidr)

    async def remove_route(self, cidr: str) -> None:
        await asyncio.to_thread(self.iface.remove_route, cidr)

    async def peers(self) -> dict[str, PeerStats]:
        return await asyncio.to_thread(self.iface.peers)
