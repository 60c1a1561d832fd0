"""A WireGuard interface of the kernel module, driven with ``ip link ... type wireguard`` and
``wg`` (wireguard-tools) in an optional network namespace.

Commands rather than python-wireguard: its C code calls ``exit(1)`` on any error, which would
end the agent or the controller, and a child process per call to contain it is what running
``wg`` already is. Nor can its API (0.2.2: ``create_server(name, port, key, local_ip)``,
``server_add_peer(device, public_key, local_ip)``, ``client_add_peer(device, public_key,
address, port)``) say what a hub and a gateway need: a peer's list of allowed CIDRs, a
persistent keepalive, removing one peer, a new key for a running interface; and it adds
addresses through ``os.system`` with the name in the command line. The kernel keeps the configuration while the interface exists (nothing to
supervise); it is also kept here, to apply at ``up()``. Every method blocks for one or a few
short commands (milliseconds); call it through ``asyncio.to_thread`` from async code. Raises
ValueError on bad arguments, TunnelError when a command fails (its stderr in the message).
The private key goes to ``wg`` on standard input, never in its arguments.
"""

from __future__ import annotations

import threading

from tunnel.config import (
    InterfaceConfig,
    Peer,
    PeerStats,
    TunnelError,
    check_name,
    parse_wg_dump,
    uapi_set,
    wg_configure_args,
    wg_remove_peer_args,
    wg_set_peer_args,
)
from tunnel.link import Link, Runner, in_netns, parse_address, parse_route, resolve_endpoint, run


class KernelWireguard:
    """The kernel WireGuard interface ``name`` in ``netns`` (None: this namespace).
    ``runner`` runs each command (tests pass one that records them)."""

    def __init__(self, name: str, netns: str | None = None, runner: Runner = run) -> None:
        self.name = check_name(name)
        self.netns = netns
        self._run = runner
        self._link = Link(name, netns, runner)
        self._config = InterfaceConfig()
        self._lock = threading.RLock()
        self._up = False

    def __repr__(self) -> str:
        return f"KernelWireguard({self.name!r}, netns={self.netns!r})"

    def up(self) -> None:
        """Create the interface (or take the one there, e.g. after a restart of this process),
        bring it up and apply what it was told so far."""
        with self._lock:
            if not self._link.exists():
                self._link.add_wireguard()
            self._link.set_up()
            c = self._config
            if c.private_key is not None:
                self._wg(wg_configure_args(self.name, c.listen_port), c.private_key)
            for peer in c.peers.values():
                self._wg(wg_set_peer_args(self.name, resolve_endpoint(peer, strict=False)))
            self._link.replace_addresses(c.addresses)
            for route in c.routes:
                self._link.add_route(route)
            self._up = True

    def down(self) -> None:
        """Remove the interface (its peers, addresses and routes go with it). Idempotent."""
        with self._lock:
            self._link.delete()
            self._up = False

    def configure(self, private_key: str, listen_port: int | None = None) -> None:
        """Set the private key (base64) and the UDP port to listen on (None: any)."""
        uapi_set(private_key=private_key, listen_port=listen_port)  # validates both
        with self._lock:
            if self._up:
                self._wg(wg_configure_args(self.name, listen_port), private_key)
            self._config.private_key, self._config.listen_port = private_key, listen_port

    def set_peer(self, peer: Peer) -> None:
        """Add ``peer`` or update it (its allowed IPs replace those it had)."""
        args = wg_set_peer_args(self.name, resolve_endpoint(peer, strict=True))
        with self._lock:
            if self._up:
                self._wg(args)
            self._config.peers[peer.public_key] = peer

    def remove_peer(self, public_key: str) -> None:
        """Remove the peer with this public key; nothing when there is none."""
        args = wg_remove_peer_args(self.name, public_key)
        with self._lock:
            if self._up:
                self._wg(args)
            self._config.peers.pop(public_key, None)

    def set_address(self, *cidrs: str) -> None:
        """Make these the interface's addresses ("100.96.0.1/16"; IPv4 and IPv6)."""
        new = [parse_address(c) for c in cidrs]
        with self._lock:
            if self._up:
                self._link.replace_addresses(new, self._config.addresses)
            self._config.addresses = new

    def add_route(self, cidr: str) -> None:
        """Route ``cidr`` through the interface (``ip route replace CIDR dev NAME``)."""
        route = parse_route(cidr)
        with self._lock:
            if self._up:
                self._link.add_route(route)
            if route not in self._config.routes:
                self._config.routes.append(route)

    def remove_route(self, cidr: str) -> None:
        """Stop routing ``cidr`` through the interface; nothing when it was not."""
        route = parse_route(cidr)
        with self._lock:
            if self._up:
                self._link.remove_route(route)
            if route in self._config.routes:
                self._config.routes.remove(route)

    def peers(self) -> dict[str, PeerStats]:
        """Each peer's latest handshake, bytes and endpoint, by base64 public key."""
        return self.status()[1]

    def listen_port(self) -> int:
        """The UDP port the interface listens on."""
        return self.status()[0]

    def status(self) -> tuple[int, dict[str, PeerStats]]:
        """The listen port and the peers, from ``wg show NAME dump``."""
        with self._lock:
            if not self._up:
                raise TunnelError(f"tunnel interface {self.name} is not up")
            return parse_wg_dump(self._wg(["show", self.name, "dump"]))

    def _wg(self, args: list[str], stdin: str | None = None) -> str:
        return self._run(in_netns(self.netns, ["wg", *args]), stdin)
