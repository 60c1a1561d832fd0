"""The rules a tunnel's name and CIDRs follow (controller.tunnels.checks), and the addresses
found in a cloud's configuration (which tell that its API goes through a tunnel)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controller.errors import Conflict, Invalid
from controller.tunnels import checks

TUNNEL = {"id": "t1", "org": "o1", "name": "dc1", "cidrs": ["172.20.0.0/16"], "excluded": ["172.20.9.0/24"]}


@pytest.mark.parametrize("config,found", [
    ({"authUrl": "http://172.20.0.5:5000/identity/v3"}, ["172.20.0.5"]),
    ({"uri": "qemu+ssh://root@10.1.0.6/system"}, ["10.1.0.6"]),
    ({"host": "10.1.0.7:443"}, ["10.1.0.7"]),
    ({"host": "[fd00:1::7]:443", "other": "fd00:1::8"}, ["fd00:1::7", "fd00:1::8"]),
    ({"endpoint": "https://[fd00:1::9]:8443/api"}, ["fd00:1::9"]),
    ({"hosts": [{"host": "10.1.0.10", "port": 22}], "region": "RegionOne"}, ["10.1.0.10"]),
    ({"authUrl": "https://keystone.example.com:5000/v3", "user": "demo"}, []),
    ({"authUrl": "http://[not-an-address/"}, []),
])
def test_addresses_in_a_clouds_configuration(config: dict[str, Any], found: list[str]) -> None:
    assert checks.literal_addresses(config) == [ipaddress.ip_address(a) for a in found]


def test_cidrs_are_canonical_and_checked() -> None:
    assert checks.cidrs([], "o1", "t9", ["172.21.0.0/16", "fd00:9::/64"], [], ["10.0.0.0/24"],
                        "100.96.0.0/16") == (["172.21.0.0/16", "fd00:9::/64"], [])
    with pytest.raises(Conflict, match="overlaps tunnel 'dc1'"):
        checks.cidrs([TUNNEL], "o1", "t9", ["172.20.1.0/24"], [], [], "100.96.0.0/16")
    # what the other tunnel excludes may be routed by this one
    checks.cidrs([TUNNEL], "o1", "t9", ["172.20.9.0/24"], [], [], "100.96.0.0/16")
    with pytest.raises(Conflict, match="another tunnel on this controller"):
        checks.cidrs([TUNNEL], "o2", "t9", ["172.20.1.0/24"], [], [], "100.96.0.0/16")
    with pytest.raises(Invalid, match="tunnel network 100.96.0.0/16"):
        checks.cidrs([], "o1", "t9", ["100.96.4.0/24"], [], ["100.96.0.0/16"], "100.96.0.0/16")
    with pytest.raises(Invalid, match="fd12::/96"):  # the hub's IPv6 twin's network
        checks.cidrs([], "o1", "t9", ["fd12::/64"], [], ["fd12::/96"], "100.96.0.0/16")
    with pytest.raises(Invalid, match="at most"):
        checks.cidrs([], "o1", "t9", [f"10.{i}.0.0/16" for i in range(65)], [], [], "100.96.0.0/16")


def test_names() -> None:
    assert checks.name_of("  dc1 ") == "dc1"
    with pytest.raises(Invalid):
        checks.name_of(" ")
    with pytest.raises(Conflict):
        checks.unique([TUNNEL], "dc1", "t9")
    checks.unique([TUNNEL], "dc1", "t1")  # its own name
