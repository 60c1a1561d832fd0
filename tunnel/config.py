"""WireGuard configuration as data and as text: peers and their statistics, the wg-quick style
file a gateway installs, and the two ways an interface is told its configuration (the UAPI
that wireguard-go serves on its socket, and ``wg set`` arguments for the kernel module), plus
parsing what each answers.

Pure functions: nothing here blocks. Bad input raises ValueError; an answer that reports a
failure raises ``TunnelError``. Private keys are rendered only into UAPI requests (never
logged) and never into a gateway's file, which gets a placeholder the gateway fills in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tunnel import keys

_NAME = re.compile(r"[A-Za-z0-9_-]{1,15}")  # IFNAMSIZ is 16 with the NUL
_ERRNO_NAMES = {-1: "operation not permitted", -2: "no such peer", -5: "I/O error",
                -22: "invalid argument", -28: "no space", -95: "not supported",
                -98: "the listen port is in use"}


class TunnelError(Exception):
    """A tunnel interface could not be brought up, configured or read; the message says which
    interface and what failed, in words fit for users (never a key)."""


def check_name(name: str) -> str:
    """``name`` when it is a usable interface name (1-15 of letters, digits, ``_``, ``-``),
    else ValueError. wireguard-go's sockets share one directory across all network
    namespaces, so names must also be unique across namespaces: the caller picks them so."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not an interface name: 1 to 15 letters, digits, '_' or '-'")
    return name


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` split into host and port; ValueError when malformed."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", endpoint.strip())
    if m is None:
        raise ValueError(f"{endpoint!r} is not an endpoint (host:port, or [IPv6]:port)")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 < int(port) < 65536:
        raise ValueError(f"{endpoint!r}: the port must be 1-65535")
    return host, int(port)


def join_endpoint(host: str, port: int) -> str:
    """The inverse of ``split_endpoint``: brackets around IPv6 addresses."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Peer:
    """One peer of an interface: its public key (base64), the CIDRs routed to it (they
    replace any it had), where to reach it (``host:port``; None when it dials in) and the
    persistent keepalive in seconds (0: off). Raises ValueError when a field is invalid."""

    public_key: str
    allowed_ips: Sequence[str] = ()
    endpoint: str | None = None
    keepalive: int = 0

    def __post_init__(self) -> None:
        if not keys.is_key(self.public_key):
            raise ValueError(f"peer public key {self.public_key!r} is not a WireGuard key")
        if isinstance(self.allowed_ips, str):
            raise ValueError("allowed_ips is a list of CIDRs, not one string")
        nets = []
        for cidr in self.allowed_ips:
            try:
                nets.append(str(ipaddress.ip_network(cidr)))
            except ValueError:
                raise ValueError(f"allowed IP {cidr!r} is not a CIDR without host bits") from None
        object.__setattr__(self, "allowed_ips", tuple(nets))
        if self.endpoint is not None:
            split_endpoint(self.endpoint)
        if not 0 <= self.keepalive <= 65535:
            raise ValueError(f"keepalive {self.keepalive} is not 0-65535 seconds")


@dataclass(frozen=True)
class PeerStats:
    """What an interface reports about a peer: the time of the latest handshake (Unix
    seconds; None when there was none), bytes received and sent, and its current endpoint."""

    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    endpoint: str | None
    allowed_ips: tuple[str, ...] = field(default=())
    keepalive: int = 0


@dataclass
class InterfaceConfig:
    """Everything an interface was told, kept by a backend to apply at ``up()`` and, for
    wireguard-go, again after a restart. Peers keep their endpoints as given (names are
    resolved each time they are applied). The private key is left out of ``repr``."""

    private_key: str | None = field(default=None, repr=False)
    listen_port: int | None = None
    peers: dict[str, Peer] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)


# UAPI (https://www.wireguard.com/xplatform/): keys in hex, one key=value a line, a blank
# line ends a request and a reply; peer keys follow the public_key line they belong to.


def uapi_set(
    private_key: str | None = None,
    listen_port: int | None = None,
    peers: Iterable[Peer] = (),
    remove: Iterable[str] = (),
    replace_peers: bool = False,
) -> str:
    """A UAPI ``set=1`` request. It contains ``private_key`` (hex) when given: send it, never
    log it. Raises ValueError on bad keys. Endpoints must already be IP:port (the UAPI does
    not resolve names)."""
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={keys.to_hex(private_key)}")
    if listen_port is not None:
        if not 0 <= listen_port < 65536:
            raise ValueError(f"listen port {listen_port} is not 0-65535")
        lines.append(f"listen_port={listen_port}")
    if replace_peers:
        lines.append("replace_peers=true")
    for p in peers:
        lines.append(f"public_key={keys.to_hex(p.public_key)}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={cidr}" for cidr in p.allowed_ips)
        if p.endpoint is not None:
            lines.append(f"endpoint={p.endpoint}")
        lines.append(f"persistent_keepalive_interval={p.keepalive}")
    for public in remove:
        lines += [f"public_key={keys.to_hex(public)}", "remove=true"]
    return "\n".join(lines) + "\n\n"


def uapi_errno(reply: str) -> int:
    """The ``errno`` of a UAPI reply (0: success); TunnelError when there is none."""
    for line in reversed(reply.strip().splitlines()):
        if line.startswith("errno="):
            try:
                return int(line[len("errno="):])
            except ValueError:
                break
    raise TunnelError(f"a malformed answer from wireguard-go: {reply[-80:]!r}")


def errno_words(errno: int) -> str:
    """A UAPI errno in words ("invalid argument")."""
    return _ERRNO_NAMES.get(errno, f"error {errno}")


@dataclass
class _PeerLines:
    key: str
    endpoint: str | None = None
    sec: int = 0
    nsec: int = 0
    rx: int = 0
    tx: int = 0
    keepalive: int = 0
    ips: list[str] = field(default_factory=list)

    def stats(self) -> PeerStats:
        return PeerStats(last_handshake=(self.sec + self.nsec / 1e9) if self.sec else None,
                         rx_bytes=self.rx, tx_bytes=self.tx, endpoint=self.endpoint,
                         allowed_ips=tuple(self.ips), keepalive=self.keepalive)


_INT_FIELDS = {"last_handshake_time_sec": "sec", "last_handshake_time_nsec": "nsec",
               "rx_bytes": "rx", "tx_bytes": "tx", "persistent_keepalive_interval": "keepalive"}


def parse_uapi_get(reply: str) -> tuple[int, dict[str, PeerStats]]:
    """The listen port and the peers (by base64 public key) from a ``get=1`` reply. Raises
    TunnelError when the reply reports an error or is malformed. Its private key is dropped."""
    errno = uapi_errno(reply)
    if errno != 0:
        raise TunnelError(f"wireguard-go could not report its state ({errno_words(errno)})")
    port = 0
    found: list[_PeerLines] = []
    try:
        for line in reply.splitlines():
            key, _, value = line.partition("=")
            if key == "public_key":
                found.append(_PeerLines(keys.from_hex(value)))
            elif not found:
                if key == "listen_port":
                    port = int(value)
                # private_key, fwmark: interface-wide lines
            elif key == "endpoint":
                found[-1].endpoint = value
            elif key == "allowed_ip":
                found[-1].ips.append(value)
            elif key in _INT_FIELDS:
                setattr(found[-1], _INT_FIELDS[key], int(value))
    except ValueError as e:
        raise TunnelError(f"a malformed answer from wireguard-go: {e}") from None
    return port, {p.key: p.stats() for p in found}


# `wg` (wireguard-tools) for the kernel module: the same configuration as arguments.


def wg_set_peer_args(name: str, peer: Peer) -> list[str]:
    """``wg set`` arguments (without ``wg``) that set ``peer`` on interface ``name``,
    replacing its allowed IPs, as ``uapi_set`` does."""
    args = ["set", check_name(name), "peer", peer.public_key, "allowed-ips", ",".join(peer.allowed_ips)]
    if peer.endpoint is not None:
        args += ["endpoint", peer.endpoint]
    args += ["persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off"]
    return args


def wg_remove_peer_args(name: str, public_key: str) -> list[str]:
    """``wg set`` arguments that remove a peer."""
    if not keys.is_key(public_key):
        raise ValueError(f"{public_key!r} is not a WireGuard public key")
    return ["set", check_name(name), "peer", public_key, "remove"]


def wg_configure_args(name: str, listen_port: int | None) -> list[str]:
    """``wg set`` arguments that set the private key, read from standard input (a key in
    argv would show in ``ps``), and the listen port when given."""
    args = ["set", check_name(name), "private-key", "/dev/stdin"]
    if listen_port is not None:
        args += ["listen-port", str(listen_port)]
    return args


def parse_wg_dump(text: str) -> tuple[int, dict[str, PeerStats]]:
    """The listen port and peers from ``wg show NAME dump`` (tab-separated: the interface's
    line first, with its private key, which is dropped; then one line a peer)."""
    lines = [line.split("\t") for line in text.strip().splitlines()]
    if not lines or len(lines[0]) < 3:
        raise TunnelError("a malformed answer from wg show")
    port = int(lines[0][2])
    peers: dict[str, PeerStats] = {}
    for f in lines[1:]:
        if len(f) < 8:
            raise TunnelError("a malformed peer line from wg show")
        public, endpoint, ips, handshake, rx, tx, keepalive = f[0], f[2], f[3], f[4], f[5], f[6], f[7]
        peers[public] = PeerStats(
            last_handshake=float(handshake) if handshake != "0" else None,
            rx_bytes=int(rx), tx_bytes=int(tx),
            endpoint=None if endpoint == "(none)" else endpoint,
            allowed_ips=tuple(ips.split(",")) if ips != "(none)" else (),
            keepalive=0 if keepalive == "off" else int(keepalive))
    return port, peers


PRIVATE_KEY_PLACEHOLDER = "__OVERCAST_PRIVATE_KEY__"


def _with_prefix(address: str) -> str:
    iface = ipaddress.ip_interface(address.strip())
    if "/" not in address:
        return f"{iface.ip}/{iface.max_prefixlen}"
    return str(iface)


def gateway_config(
    address: str,
    hub_public_key: str,
    hub_endpoint: str,
    hub_address: str,
    keepalive: int = 25,
    private_key_placeholder: str = PRIVATE_KEY_PLACEHOLDER,
    post_up: Sequence[str] = (),
    post_down: Sequence[str] = (),
) -> str:
    """The wg-quick style file of a gateway: its tunnel ``address`` (a bare address is a /32
    or /128), the hub as its only peer, dialled at ``hub_endpoint`` (``host:port``) with a
    persistent keepalive so that the private side needs no inbound port, and the hub's tunnel
    address as the peer's allowed IPs. The private key is ``private_key_placeholder``: the
    gateway makes its key and substitutes it. ``post_up``/``post_down`` commands (forwarding,
    NAT) are added as wg-quick ``PostUp``/``PostDown`` lines. Raises ValueError on bad input.
    """
    try:
        own, hub = _with_prefix(address), ipaddress.ip_interface(hub_address.strip()).ip
    except ValueError as e:
        raise ValueError(f"not a tunnel address: {e}") from None
    if not keys.is_key(hub_public_key):
        raise ValueError(f"{hub_public_key!r} is not a WireGuard public key")
    split_endpoint(hub_endpoint)
    if not 0 <= keepalive <= 65535:
        raise ValueError(f"keepalive {keepalive} is not 0-65535 seconds")
    lines = ["# Overcast tunnel gateway: the controller is the hub; this side dials out.",
             "[Interface]", f"PrivateKey = {private_key_placeholder}", f"Address = {own}"]
    lines += [f"PostUp = {c}" for c in post_up] + [f"PostDown = {c}" for c in post_down]
    lines += ["", "[Peer]", f"PublicKey = {hub_public_key}", f"Endpoint = {hub_endpoint.strip()}",
              f"AllowedIPs = {hub}/{hub.max_prefixlen}"]
    if keepalive:
        lines.append(f"PersistentKeepalive = {keepalive}")
    return "\n".join(lines) + "\n"
