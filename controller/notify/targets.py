"""Where a webhook may go. A webhook makes the controller send a request that a member
chooses (method, headers, body) to an address the member chooses, so it is held to a
stricter policy than a cloud's endpoint (:mod:`controller.clouds.targets`):

- a global unicast address: allowed;
- the controller's own host (loopback, the unspecified address, its interfaces' addresses,
  ``localhost`` names), link-local addresses and cloud metadata services (AWS, GCP, Azure,
  Alibaba, the ECS task endpoint, AWS's IPv6 one): refused unless the operator turns
  ``allow_local_clouds`` on (a single-user install managing its own host, or tests);
- every other address that is not global (10/8, 172.16/12, 192.168/16, CGNAT 100.64/10,
  unique-local fc00::/7, benchmarking, documentation, reserved and multicast ranges):
  refused unless ``allow_private_webhooks`` is on (webhooks to an internal chat server or
  pager), or ``allow_local_clouds`` (which allows everything above).

IPv6 addresses that carry an IPv4 address (mapped ``::ffff:a.b.c.d``, compatible
``::a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) are judged by that IPv4 address
too. A name is judged by every address it resolves to. The check runs when a rule is added
or edited (an early, clear error) and again when the connection is made
(:class:`controller.notify.webhook.GuardedResolver`: the addresses the name resolves to
then, so DNS rebinding is caught). No network library is imported here."""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

from controller.clouds.targets import own_addresses

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# cloud metadata and platform services that are not all link-local (Alibaba's sits in
# CGNAT space, Azure's wire server is a public address, AWS's IPv6 one is unique-local)
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",   # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle...
    "169.254.170.2",     # AWS ECS task metadata and credentials
    "169.254.169.253",   # AWS VPC DNS
    "fd00:ec2::254",     # AWS IPv6 metadata
    "fd00:ec2::253",     # AWS IPv6 VPC DNS
    "100.100.100.200",   # Alibaba Cloud metadata
    "168.63.129.16",     # Azure wire server
))
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPAT = ipaddress.ip_network("::/96")

LOCAL = "local"        # needs allow_local_clouds
PRIVATE = "private"    # needs allow_private_webhooks (or allow_local_clouds)

_own: tuple[float, frozenset[Address]] = (0.0, frozenset())


def _own_addresses() -> frozenset[Address]:
    """The controller's interfaces' addresses, looked up at most every 30 s."""
    global _own
    at, addrs = _own
    if time.monotonic() - at > 30:
        addrs = frozenset(own_addresses())
        _own = (time.monotonic(), addrs)
    return addrs


def _embedded(a: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if a.sixtofour is not None:
        return a.sixtofour
    if a in _NAT64 or (a in _COMPAT and int(a) > 1):
        return ipaddress.IPv4Address(int(a) & 0xFFFFFFFF)
    return None


def _kind(a: Address) -> tuple[str, str] | None:
    """(LOCAL or PRIVATE, what the address is), or None for a global unicast address."""
    if a in METADATA:
        return LOCAL, "a cloud metadata service"
    if a.is_loopback or a.is_unspecified or a in _own_addresses():
        return LOCAL, "this controller's own host"
    if a.is_link_local:
        return LOCAL, "a link-local address, where cloud metadata services live"
    if not a.is_global or a.is_multicast or a.is_reserved:
        return PRIVATE, "not a public address"
    return None


def classify(a: Address) -> tuple[str, str] | None:
    """The strictest of ``a`` and the IPv4 address it carries (see the module's doc); a
    mapped address (``::ffff:a.b.c.d``) is that IPv4 address."""
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return _kind(a.ipv4_mapped)
    found = [_kind(a)]
    if isinstance(a, ipaddress.IPv6Address):
        v4 = _embedded(a)
        if v4 is not None:
            found.append(_kind(v4))
    if any(k and k[0] == LOCAL for k in found):
        return next(k for k in found if k and k[0] == LOCAL)
    return next((k for k in found if k), None)


def refusal(a: Address, allow_private: bool, allow_local: bool, shown: str = "") -> str | None:
    """Why a webhook may not connect to ``a`` under the settings, else None."""
    if allow_local:
        return None
    got = classify(a)
    if got is None:
        return None
    kind, what = got
    where = f"{shown} ({a})" if shown and shown != str(a) else str(a)
    if kind == LOCAL:
        return (f"{where} is {what}: webhooks there are refused unless the operator sets "
                "allow_local_clouds")
    if allow_private:
        return None
    return (f"{where} is {what}: webhooks to private addresses are refused unless the "
            "operator sets allow_private_webhooks")


def parse_ip(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None


def host_refusal(host: str, allow_private: bool, allow_local: bool) -> str | None:
    """Why a webhook may not go to ``host`` (an address, or a name resolved now: blocking),
    else None. A name that does not resolve passes: the attempt will say it cannot connect."""
    if allow_local:
        return None
    h = host.strip().lower().rstrip(".")
    if h in LOCAL_NAMES or h.endswith(".localhost"):
        return (f"{host} is this controller's own host: webhooks there are refused unless the "
                "operator sets allow_local_clouds")
    ip = parse_ip(h)
    if ip is not None:
        return refusal(ip, allow_private, allow_local)
    try:
        infos = socket.getaddrinfo(h, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for info in infos:
        a = parse_ip(str(info[4][0]))
        why = refusal(a, allow_private, allow_local, host) if a is not None else None
        if why:
            return why
    return None


def url_refusal(url: str, allow_private: bool, allow_local: bool) -> str | None:
    """:func:`host_refusal` for a URL's host (blocking: it may resolve a name)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return "the URL cannot be read"
    return host_refusal(host, allow_private, allow_local) if host else "the URL has no host"
