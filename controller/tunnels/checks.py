"""The rules a tunnel's name and CIDRs follow. Pure: the callers pass the tunnels that exist
and the networks the controller host owns; nothing here blocks or writes. Raises the
controller's errors: Invalid (a field), Conflict (an overlap, a name taken)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from controller.errors import Conflict, Invalid
from controller.tunnels.model import MAX_CIDRS
from tunnel import addressing


def name_of(value: Any) -> str:
    """A tunnel's name, stripped; Invalid when empty or longer than 100 characters."""
    name = str(value or "").strip()
    if not name or len(name) > 100:
        raise Invalid("name must have 1 to 100 characters", field="name")
    return name


def unique(docs: Iterable[dict[str, Any]], name: str, except_id: str) -> None:
    """Conflict when another of ``docs`` (one organisation's tunnels) has ``name``."""
    for d in docs:
        if d["name"] == name and d["id"] != except_id:
            raise Conflict(f"a tunnel named {name!r} exists already", {"field": "name"})


def cidrs(docs: Iterable[dict[str, Any]], org: str, tunnel_id: str, cidrs: Any, excluded: Any,
          own: list[str], tunnel_network: str) -> tuple[list[str], list[str]]:
    """The CIDRs and exclusions in canonical form, refused when they are not CIDRs, overlap
    each other, the controller's ``own`` networks (which include the tunnel networks), or
    another tunnel's of ``docs`` (of any organisation: the controller has one routing table;
    another organisation's tunnel is never named)."""
    for what, value in (("cidrs", cidrs), ("excluded", excluded)):
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise Invalid(f"{what} must be a list of CIDRs", field=what)
        if len(value) > MAX_CIDRS:
            raise Invalid(f"{what}: at most {MAX_CIDRS} CIDRs", field=what)
    try:
        nets = [str(n) for n in addressing.parse_cidrs(cidrs)]
    except ValueError as e:
        raise Invalid(str(e), field="cidrs") from None
    try:
        exc = [str(n) for n in addressing.parse_cidrs(excluded)]
    except ValueError as e:
        raise Invalid(str(e), field="excluded") from None
    mine = addressing.allowed_ips(nets, exc) if nets else []
    for other in docs:
        if other["id"] == tunnel_id:
            continue
        for n in mine:
            for t in addressing.allowed_ips(other["cidrs"], other["excluded"]):
                a, b = ipaddress.ip_network(n), ipaddress.ip_network(t)
                if a.version == b.version and a.overlaps(b):
                    if other["org"] == org:
                        raise Conflict(f"{n} overlaps tunnel {other['name']!r} ({t})", {"field": "cidrs"})
                    raise Conflict(f"{n} overlaps the networks of another tunnel on this "
                                   "controller (each address can be routed through one "
                                   "tunnel only)", {"field": "cidrs"})
    try:
        addressing.check_routes(nets, exc, local=own)
    except ValueError as e:
        raise Invalid(str(e).replace(f"network {tunnel_network}", f"tunnel network {tunnel_network}"),
                      field="cidrs") from None
    return nets, exc


def literal_addresses(value: Any) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The IP addresses written in ``value`` (a cloud's configuration: strings, lists and
    objects of them): URLs' hosts ("http://10.1.0.5:5000/v3", "qemu+ssh://root@10.1.0.6/
    system"), "host:port", "[v6]:port" and bare addresses. Names are not resolved."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    if isinstance(value, dict):
        for v in value.values():
            found += literal_addresses(v)
    elif isinstance(value, list):
        for v in value:
            found += literal_addresses(v)
    elif isinstance(value, str):
        text = value.strip()
        if "://" in text:
            try:
                text = urlsplit(text).hostname or ""
            except ValueError:
                return []
        elif text.startswith("[") and "]" in text:
            text = text[1:text.index("]")]
        elif text.count(":") == 1:
            text = text.split(":")[0]
        try:
            found.append(ipaddress.ip_address(text))
        except ValueError:
            pass
    return found
