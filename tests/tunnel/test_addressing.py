"""tunnel.addressing: CIDRs checked in words, allowed IPs minus exclusions, addresses
allocated from a pool, and the hub's IPv6 twin; IPv4 and IPv6."""

from __future__ import annotations

import ipaddress

import pytest

from tunnel import addressing, keys
from tunnel.addressing import allocate, allowed_ips, check_routes, parse_cidr, parse_cidrs


def test_parse_in_words() -> None:
    assert parse_cidrs(["10.1.0.0/16", "fd00:1::/64", "10.9.9.9"]) == [
        ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00:1::/64"),
        ipaddress.ip_network("10.9.9.9/32")]
    assert parse_cidrs("10.1.0.0/16") == [ipaddress.ip_network("10.1.0.0/16")]
    with pytest.raises(ValueError, match=r"'10.1.2.3/16' has host bits set: did you mean 10.1.0.0/16\?"):
        parse_cidr("10.1.2.3/16")
    with pytest.raises(ValueError, match="'lab' is not a CIDR"):
        parse_cidr("lab")
    with pytest.raises(ValueError, match="not a CIDR"):
        parse_cidr("10.1.0.0/33")


def test_overlap_with_another_tunnel_in_words() -> None:
    taken = {"lab": ["10.1.2.0/24"], "dc": ["fd00:2::/48"]}
    with pytest.raises(ValueError) as e:
        check_routes(["10.1.0.0/16"], [], taken, [])
    assert str(e.value) == "10.1.0.0/16 overlaps tunnel 'lab' (10.1.2.0/24)"
    with pytest.raises(ValueError, match=r"fd00:2:0:1::/64 overlaps tunnel 'dc' \(fd00:2::/48\)"):
        check_routes(["fd00:2:0:1::/64"], [], taken, [])
    check_routes(["10.2.0.0/16", "fd00:3::/48"], [], taken, [])  # disjoint: fine
    with pytest.raises(ValueError, match="10.1.0.0/24 overlaps 10.1.0.0/16, also listed"):
        check_routes(["10.1.0.0/16", "10.1.0.0/24"])


def test_refuses_the_controllers_own_networks() -> None:
    local = ["10.250.0.0/24", "100.96.0.0/16", "fd00:aa::/64"]
    with pytest.raises(ValueError, match="10.0.0.0/8 overlaps the controller's own network 10.250.0.0/24"):
        check_routes(["10.0.0.0/8"], local=local)
    with pytest.raises(ValueError, match="overlaps the controller's own network 10.250.0.0/24"):
        check_routes(["10.250.0.128/25"], local=local)
    with pytest.raises(ValueError, match="100.96.0.0/16"):
        check_routes(["100.64.0.0/10"], local=local)
    with pytest.raises(ValueError, match="fd00:aa::/64"):
        check_routes(["fd00::/8"], local=local)
    check_routes(["10.1.0.0/16"], local=local)


@pytest.mark.parametrize("cidr, words", [
    ("0.0.0.0/0", "would take the default route"),
    ("::/0", "would take the default route"),
    ("127.0.0.0/8", "loopback"),
    ("0.0.0.0/1", "loopback"),  # half the Internet, loopback in it
    ("::1/128", "loopback"),
    ("169.254.10.0/24", "link-local"),
    ("fe80::/64", "link-local"),
    ("224.0.0.0/8", "multicast"),
    ("ff02::/16", "multicast"),
])
def test_refuses_what_no_tunnel_may_route(cidr: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_routes([cidr])


def test_exclusions() -> None:
    check_routes(["10.1.0.0/16"], ["10.1.5.0/24"])
    with pytest.raises(ValueError, match=r"excluded 10.2.0.0/24 is not inside the tunnel's CIDRs \(10.1.0.0/16\)"):
        check_routes(["10.1.0.0/16"], ["10.2.0.0/24"])
    with pytest.raises(ValueError, match="not inside"):
        check_routes(["10.1.0.0/16"], ["fd00::/64"])  # another family
    with pytest.raises(ValueError, match="leave nothing"):
        check_routes(["10.1.0.0/16"], ["10.1.0.0/16"])
    with pytest.raises(ValueError, match="at least one CIDR"):
        check_routes([])


def test_allowed_ips_minus_exclusions() -> None:
    assert allowed_ips(["10.1.0.0/24"], ["10.1.0.0/26"]) == ["10.1.0.64/26", "10.1.0.128/25"]
    assert allowed_ips(["10.1.0.0/16", "fd00:1::/64"], ["10.1.128.0/17", "fd00:1::/65"]) == [
        "10.1.0.0/17", "fd00:1:0:0:8000::/65"]
    assert allowed_ips(["10.1.0.0/24", "10.1.1.0/24"]) == ["10.1.0.0/23"]  # collapsed
    assert allowed_ips(["10.1.0.0/24"], ["10.1.0.0/24"]) == []
    # the result plus the exclusions is exactly the CIDR again
    parts = allowed_ips(["10.0.0.0/8"], ["10.1.2.0/24", "10.200.0.0/16"])
    covered = sum(ipaddress.ip_network(p).num_addresses for p in parts)
    assert covered == 2**24 - 256 - 2**16
    assert not any(ipaddress.ip_network(p).overlaps(ipaddress.ip_network("10.1.2.0/24")) for p in parts)


def test_allocate() -> None:
    pool = "100.96.0.0/16"
    hub = allocate(pool, [])
    assert hub == "100.96.0.1"
    assert allocate(pool, [hub]) == "100.96.0.2"
    assert allocate(pool, ["100.96.0.1/16", "100.96.0.2/32", "10.0.0.1"]) == "100.96.0.3"
    assert allocate(pool, ["100.96.0.1", "100.96.0.3"]) == "100.96.0.2"  # reuses a freed one
    assert allocate("fd00:ac::/64", []) == "fd00:ac::1"
    assert allocate("fd00:ac::/64", ["fd00:ac::1"]) == "fd00:ac::2"
    with pytest.raises(ValueError, match=r"the tunnel address pool 100.96.0.0/30 is full \(2 in use\)"):
        allocate("100.96.0.0/30", ["100.96.0.1", "100.96.0.2"])
    with pytest.raises(ValueError, match="not an address"):
        allocate(pool, ["gateway"])


def test_the_hubs_ipv6_twin_is_derived_from_its_key_and_ipv4_address() -> None:
    k1, k2 = (keys.public_of(keys.generate_private()) for _ in range(2))
    net = ipaddress.IPv6Network(addressing.ipv6_twin_network(k1))
    assert net.prefixlen == 96 and net.subnet_of(ipaddress.IPv6Network("fd00::/8"))  # unique-local
    twin = addressing.ipv6_twin("100.96.0.1", k1)
    assert ipaddress.ip_address(twin) in net and twin.endswith("::6460:1")  # the IPv4 in the last 32 bits
    assert addressing.ipv6_twin("100.96.0.1/16", k1) == twin  # the same on every side
    assert addressing.ipv6_twin("100.96.0.1", k2) != twin  # another hub, another /48
    assert addressing.ipv6_twin("fd00::1", k1) == "fd00::1"  # an IPv6 hub is its own twin
    with pytest.raises(ValueError):
        addressing.ipv6_twin_network("not base64!")
