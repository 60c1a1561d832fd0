"""Where a cloud's credentials point, and the policy on the controller's own host.

A cloud's endpoint, host or libvirt URI makes the controller itself connect somewhere. Left
open, any member could aim it at the controller's host — its hypervisor (``qemu:///system``),
its Docker socket (root on the host), services on loopback, or a cloud metadata service on
a link-local address (instance credentials). Those targets are refused unless the operator
turns ``allow_local_clouds`` on (a single-user install managing its own host, or tests).
The controller's own addresses count as its host, whatever the interface; IPv4-mapped IPv6
addresses are read as the IPv4 address they carry; socket paths (``unix://``, ``/path``) are
always local. Other private addresses (10/8, 192.168/16, ...) stay allowed: reaching
private clouds is the point. HTTP redirects are not followed by provider calls (see
``providers.registry``), so an allowed endpoint cannot bounce a call to a refused one. Names
are resolved when the cloud is added or edited; a name that later resolves elsewhere (DNS
rebinding) is not caught here."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

ADDRESS_FIELDS = ("endpoint", "host", "url", "authUrl", "computeEndpoint", "apiurl")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_SOCKET_SCHEMES = {"unix", "npipe", "http+unix", "file"}


def own_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address of this host's interfaces (a cloud there is the controller's host too)."""
    import psutil

    out: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            try:
                out.add(ipaddress.ip_address(str(a.address).split("%")[0]))
            except ValueError:
                continue  # MAC addresses
    return out


def _host_of(value: str) -> str:
    v = value.strip()
    if "://" in v:
        parts = urlsplit(v)
        if parts.scheme.lower() in _SOCKET_SCHEMES:
            return "localhost"  # a socket path is always this host
        return parts.hostname or ""
    if v.startswith("/"):
        return "localhost"
    if v.startswith("["):
        return v[1:].split("]")[0]
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


def _local_address(host: str) -> str | None:
    """Why ``host`` is the controller's own or link-local, else None."""
    h = host.strip().lower().rstrip(".")
    if not h:
        return None
    if h in _LOCAL_NAMES or h.endswith(".localhost"):
        return f"{host} is this controller's own host"
    try:
        addrs = [ipaddress.ip_address(h)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(h, None)
        except (OSError, UnicodeError):
            return None  # unresolvable: the credential check will say it cannot be reached
        addrs = [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]
    mine = own_addresses()
    for a in addrs:
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            a = a.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if a.is_loopback or a.is_unspecified or a in mine:
            return f"{host} is this controller's own host ({a})"
        if a.is_link_local:
            return f"{host} is a link-local address ({a}), where cloud metadata services live"
    return None


def local_targets(config: dict[str, Any]) -> list[str]:
    """Reasons the cloud's configuration reaches the controller's own host (empty: none)."""
    out: list[str] = []
    for name in ADDRESS_FIELDS:
        v = config.get(name)
        if isinstance(v, str) and v.strip():
            why = _local_address(_host_of(v))
            if why:
                out.append(f"{name}: {why}")
    for i, item in enumerate(config.get("hosts") or []):
        if isinstance(item, dict) and isinstance(item.get("host"), str):
            why = _local_address(_host_of(item["host"]))
            if why:
                out.append(f"hosts[{i}].host: {why}")
    uri = config.get("uri")
    if isinstance(uri, str) and uri.strip():
        parts = urlsplit(uri.strip())
        if not parts.hostname:
            out.append(f"uri: {uri.strip()} is a hypervisor on this controller's own host")
        else:
            why = _local_address(parts.hostname)
            if why:
                out.append(f"uri: {why}")
    if isinstance(config.get("socket"), str) and config["socket"].strip():
        out.append("socket: a unix socket on this controller's own host")
    return out
