"""The network side of a tunnel interface, common to both backends: its addresses, its state
(up) and the routes through it, set with iproute2's ``ip`` in an optional network namespace;
peers' endpoints resolved to addresses; and the one place commands are run.

Every call blocks for the time of one or a few short commands (milliseconds). A command that
fails raises ``TunnelError`` with its stderr in the message.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace

from tunnel.config import Peer, TunnelError, check_name, join_endpoint, split_endpoint

log = logging.getLogger(__name__)

# argv and standard input -> standard output; raises TunnelError. Tests pass their own.
Runner = Callable[[Sequence[str], str | None], str]


def run(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a command and return its standard output. Blocks until it ends (10 s at most).
    Raises TunnelError when it cannot start, fails or times out. Standard input (it may
    carry a private key) never appears in a message or in the log."""
    try:
        r = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise TunnelError(f"{argv[0]} is not installed") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TunnelError(f"{' '.join(argv[:4])}: {e}") from None
    if r.returncode != 0:
        raise TunnelError(f"{' '.join(argv)}: {r.stderr.strip() or f'exit status {r.returncode}'}")
    return r.stdout


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns`` (through ``ip netns exec``), or as is when None."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def parse_address(cidr: str) -> str:
    """An interface address with its prefix ("100.96.0.1/16", "fd00::1/64"); ValueError."""
    try:
        return str(ipaddress.ip_interface(cidr.strip()))
    except ValueError:
        raise ValueError(f"{cidr!r} is not an address with a prefix length (like 100.96.0.1/16)") from None


def parse_route(cidr: str) -> str:
    """A route's destination ("10.1.0.0/16"); ValueError when host bits are set."""
    try:
        return str(ipaddress.ip_network(cidr.strip()))
    except ValueError:
        raise ValueError(f"{cidr!r} is not a CIDR without host bits (like 10.1.0.0/16)") from None


class Link:
    """The interface ``name`` as iproute2 sees it, in ``netns`` (None: this namespace)."""

    def __init__(self, name: str, netns: str | None = None, runner: Runner = run) -> None:
        self.name = check_name(name)
        self.netns = netns
        self._run = runner

    def _ip(self, *args: str) -> str:
        ns = ["-n", self.netns] if self.netns else []
        return self._run(["ip", *ns, *args], None)

    def exists(self) -> bool:
        """True when the interface is there."""
        try:
            self._ip("link", "show", "dev", self.name)
        except TunnelError:
            return False
        return True

    def add_wireguard(self) -> None:
        """Create the interface as a kernel WireGuard device (needs the module)."""
        self._ip("link", "add", "dev", self.name, "type", "wireguard")

    def set_up(self) -> None:
        """Bring the interface up."""
        self._ip("link", "set", "dev", self.name, "up")

    def replace_addresses(self, new: Sequence[str], old: Sequence[str] = ()) -> None:
        """Give the interface the addresses ``new`` and take away those of ``old`` not in it
        (add before remove: no moment without an address)."""
        for cidr in new:
            self._ip("address", "replace", cidr, "dev", self.name)
        for cidr in old:
            if cidr not in new:
                self._forgiving("address", "del", cidr, "dev", self.name)

    def add_route(self, cidr: str) -> None:
        """Route ``cidr`` through the interface (replacing a route to it through elsewhere)."""
        self._ip("route", "replace", cidr, "dev", self.name)

    def remove_route(self, cidr: str) -> None:
        """Remove the route to ``cidr`` through the interface; nothing when there is none."""
        self._forgiving("route", "del", cidr, "dev", self.name)

    def delete(self) -> None:
        """Remove the interface; nothing when it is gone already."""
        if self.exists():
            self._forgiving("link", "del", "dev", self.name)

    def _forgiving(self, *args: str) -> None:
        try:
            self._ip(*args)
        except TunnelError as e:  # already gone: what was wanted
            log.debug("%s", e)


def resolve_endpoint(peer: Peer, strict: bool) -> Peer:
    """``peer`` with its endpoint as IP:port (the UAPI takes no names). When the name does not
    resolve: TunnelError if ``strict``, else the peer without endpoint (it may dial in)."""
    if peer.endpoint is None:
        return peer
    host, port = split_endpoint(peer.endpoint)
    try:
        ipaddress.ip_address(host)
        return peer
    except ValueError:
        pass
    try:
        address = str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0])
    except (OSError, IndexError) as e:
        if strict:
            raise TunnelError(f"cannot resolve the endpoint of peer {peer.public_key}: {host}: {e}") from None
        log.warning("cannot resolve %s for peer %s: it is set without endpoint", host, peer.public_key)
        return replace(peer, endpoint=None)
    return replace(peer, endpoint=join_endpoint(address, port))

