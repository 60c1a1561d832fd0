"""Tunnel addressing: the private CIDRs a tunnel routes, checked against each other, the
controller's own networks and the addresses no tunnel may take; the WireGuard allowed-ips
they become; the tunnel addresses of the hub and its gateways, allocated from a pool; and
the hub's IPv6 twin, the source of what it sends to IPv6 CIDRs.

IPv4 and IPv6 throughout. Pure functions: nothing here blocks or touches the system. Every
error is a ValueError whose message names the CIDRs involved, fit to show to users.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CidrLike = str | Network

# Networks a tunnel never routes: they are this host's own, or not unicast.
_RESERVED: tuple[tuple[Network, str], ...] = (
    (ipaddress.ip_network("127.0.0.0/8"), "loopback"),
    (ipaddress.ip_network("::1/128"), "loopback"),
    (ipaddress.ip_network("169.254.0.0/16"), "link-local"),
    (ipaddress.ip_network("fe80::/10"), "link-local"),
    (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
)


def parse_cidr(value: CidrLike) -> Network:
    """One CIDR ("10.1.0.0/16", "fd00:1::/64"; a bare address is a /32 or /128). Raises
    ValueError in words, e.g. when host bits are set."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    text = str(value).strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR (like 10.1.0.0/16 or fd00:1::/64)") from None
    raise ValueError(f"{text!r} has host bits set: did you mean {loose}?")


def parse_cidrs(values: Iterable[CidrLike]) -> list[Network]:
    """Each of ``values`` parsed as by ``parse_cidr``, in order. Raises ValueError in words."""
    if isinstance(values, str):  # a lone string would otherwise be split into characters
        values = [values]
    return [parse_cidr(v) for v in values]


def _overlap(a: Network, b: Network) -> bool:
    return a.version == b.version and a.overlaps(b)


def check_routes(
    cidrs: Iterable[CidrLike],
    excluded: Iterable[CidrLike] = (),
    taken: Mapping[str, Iterable[CidrLike]] | None = None,
    local: Iterable[CidrLike] = (),
) -> None:
    """Refuse, with a ValueError naming the CIDRs, a tunnel that would route ``cidrs`` minus
    ``excluded`` when:

    - a CIDR is a default route (0.0.0.0/0, ::/0): a tunnel reaches private networks only;
    - a CIDR overlaps loopback, link-local or multicast addresses;
    - a CIDR overlaps one of ``local``, the controller's own networks (pass its interfaces'
      networks and the tunnel address pool): routing them away would cut the controller off;
    - a CIDR overlaps another tunnel's, ``taken`` maps each other tunnel's name to its CIDRs
      (to let a tunnel take what another excludes, pass that one's ``allowed_ips``);
    - two of the CIDRs overlap each other;
    - an excluded CIDR is not inside one of the CIDRs, or the exclusions leave nothing.
    """
    nets = parse_cidrs(cidrs)
    exc = parse_cidrs(excluded)
    if not nets:
        raise ValueError("a tunnel needs at least one CIDR to route")
    for i, n in enumerate(nets):
        if n.prefixlen == 0:
            raise ValueError(f"{n} would take the default route: a tunnel routes private networks only")
        for special, what in _RESERVED:
            if _overlap(n, special):
                raise ValueError(f"{n} overlaps the {what} addresses ({special})")
        for other in nets[:i]:
            if _overlap(n, other):
                raise ValueError(f"{n} overlaps {other}, also listed")
        for own in parse_cidrs(local):
            if _overlap(n, own):
                raise ValueError(f"{n} overlaps the controller's own network {own}")
        for name, theirs in (taken or {}).items():
            for t in parse_cidrs(theirs):
                if _overlap(n, t):
                    raise ValueError(f"{n} overlaps tunnel {name!r} ({t})")
    for e in exc:
        if not any(e.version == n.version and e.subnet_of(n) for n in nets):  # type: ignore[arg-type]
            inside = ", ".join(str(n) for n in nets)
            raise ValueError(f"excluded {e} is not inside the tunnel's CIDRs ({inside})")
    if not allowed_ips(nets, exc):
        raise ValueError("the excluded CIDRs leave nothing of the tunnel's CIDRs to route")


def allowed_ips(cidrs: Iterable[CidrLike], excluded: Iterable[CidrLike] = ()) -> list[str]:
    """The CIDRs minus the exclusions, as WireGuard allowed-ips: collapsed, IPv4 first, sorted.
    Raises ValueError when a value is not a CIDR."""
    remaining = parse_cidrs(cidrs)
    for e in parse_cidrs(excluded):
        after: list[Network] = []
        for n in remaining:
            if e.version == n.version and e.subnet_of(n):  # type: ignore[arg-type]
                after.extend(n.address_exclude(e))  # type: ignore[arg-type]
            elif e.version == n.version and n.subnet_of(e):  # type: ignore[arg-type]
                continue  # excluded whole
            else:
                after.append(n)
        remaining = after
    v4 = ipaddress.collapse_addresses(n for n in remaining if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in remaining if isinstance(n, ipaddress.IPv6Network))
    return [str(n) for n in sorted(v4)] + [str(n) for n in sorted(v6)]


def allocate(pool: CidrLike, used: Iterable[str]) -> str:
    """The first host address of ``pool`` (e.g. "100.96.0.0/16") that is not in ``used``
    (addresses, with or without a prefix length; those outside the pool are ignored). The hub
    takes the first (``allocate(pool, [])`` is 100.96.0.1), gateways the next free ones.
    Raises ValueError when the pool is not a CIDR or is full."""
    net = parse_cidr(pool)
    taken = set()
    for u in used:
        try:
            taken.add(ipaddress.ip_interface(str(u).strip()).ip)
        except ValueError:
            raise ValueError(f"{u!r} is not an address") from None
    # hosts() is lazy: this looks at no more than len(used) + 1 addresses, even in an IPv6 /64
    for address in net.hosts():
        if address not in taken:
            return str(address)
    raise ValueError(f"the tunnel address pool {net} is full ({len([a for a in taken if a in net])} in use)")


# The hub's IPv6 twin. The hub's tunnel address is IPv4 (tunnel_network); to reach IPv6
# CIDRs it also needs an IPv6 source that every gateway lets in from it, routes back to it
# and masquerades from. Both ends derive it from what they share (the hub's public key and
# its IPv4 address), so no message has to carry it: a unique-local /48 (RFC 4193) whose
# global ID is the first 40 bits of the SHA-256 of the hub's key, subnet 0, and the IPv4
# address in the last 32 bits.
TWIN_PREFIXLEN = 96


def ipv6_twin_network(hub_public_key: str) -> str:
    """The /96 the hub's IPv6 twin lies in ("fdxx:xxxx:xxxx::/96"). Raises ValueError when the
    key is not base64."""
    try:
        raw = base64.b64decode(hub_public_key, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the hub's public key is not base64") from None
    global_id = hashlib.sha256(raw).digest()[:5]
    prefix = int.from_bytes(b"\xfd" + global_id, "big") << 80
    return str(ipaddress.IPv6Network((prefix, TWIN_PREFIXLEN)))


def ipv6_twin(address: str, hub_public_key: str) -> str:
    """The IPv6 twin (no prefix) of IPv4 tunnel address ``address`` (with or without prefix):
    the hub's own is where it sends IPv6 from. An IPv6 ``address`` is its own twin. Raises
    ValueError when the address or the key is not valid."""
    a = ipaddress.ip_interface(address.strip()).ip
    if a.version == 6:
        return str(a)
    net = ipaddress.IPv6Network(ipv6_twin_network(hub_public_key))
    return str(net.network_address + int(a))
