"""tunnel.config: peers validated, a gateway's wg-quick file, UAPI requests and replies, and
wg's arguments and dump."""

from __future__ import annotations

import configparser

import pytest

from tunnel import keys
from tunnel.config import (
    InterfaceConfig,
    Peer,
    TunnelError,
    check_name,
    gateway_config,
    parse_uapi_get,
    parse_wg_dump,
    split_endpoint,
    uapi_errno,
    uapi_set,
    wg_configure_args,
    wg_remove_peer_args,
    wg_set_peer_args,
)

PRIVATE = keys.generate_private()
PUBLIC = keys.public_of(keys.generate_private())
HUB = keys.public_of(keys.generate_private())


def test_names() -> None:
    assert check_name("oc-hub_1") == "oc-hub_1"
    assert check_name("a" * 15) == "a" * 15
    for bad in ["", "a" * 16, "wg0.1", "wg 0", "../x", "wg/0"]:
        with pytest.raises(ValueError, match="not an interface name"):
            check_name(bad)


def test_endpoints() -> None:
    assert split_endpoint("gw.example.com:51820") == ("gw.example.com", 51820)
    assert split_endpoint("[fd00::1]:51820") == ("fd00::1", 51820)
    for bad in ["gw.example.com", "fd00::1:51820", "x:0", "x:70000", "x:port"]:
        with pytest.raises(ValueError):
            split_endpoint(bad)


def test_peer_validation() -> None:
    p = Peer(PUBLIC, ["10.1.0.0/16", "fd00::/64"], "10.0.0.1:51820", 25)
    assert p.allowed_ips == ("10.1.0.0/16", "fd00::/64")
    with pytest.raises(ValueError, match="not a WireGuard key"):
        Peer("nope")
    with pytest.raises(ValueError, match="not a CIDR"):
        Peer(PUBLIC, ["10.1.2.3/16"])
    with pytest.raises(ValueError, match="not one string"):
        Peer(PUBLIC, "10.1.0.0/16")
    with pytest.raises(ValueError, match="endpoint"):
        Peer(PUBLIC, [], "10.0.0.1")
    with pytest.raises(ValueError, match="keepalive"):
        Peer(PUBLIC, [], None, 70000)


def test_uapi_set_lines() -> None:
    text = uapi_set(PRIVATE, 51820, [Peer(PUBLIC, ["10.1.0.0/16"], "10.0.0.2:51821", 25)],
                    remove=[HUB], replace_peers=True)
    assert text == (
        "set=1\n"
        f"private_key={keys.to_hex(PRIVATE)}\n"
        "listen_port=51820\n"
        "replace_peers=true\n"
        f"public_key={keys.to_hex(PUBLIC)}\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.1.0.0/16\n"
        "endpoint=10.0.0.2:51821\n"
        "persistent_keepalive_interval=25\n"
        f"public_key={keys.to_hex(HUB)}\n"
        "remove=true\n\n")
    assert uapi_set() == "set=1\n\n"
    with pytest.raises(ValueError):
        uapi_set(listen_port=70000)
    assert "private_key" not in repr(InterfaceConfig(private_key=PRIVATE))
    assert PRIVATE not in repr(InterfaceConfig(private_key=PRIVATE))


def test_uapi_replies() -> None:
    assert uapi_errno("errno=0\n\n") == 0
    assert uapi_errno("errno=-22\n\n") == -22
    with pytest.raises(TunnelError, match="malformed"):
        uapi_errno("")
    reply = (f"private_key={keys.to_hex(PRIVATE)}\nlisten_port=51820\n"
             f"public_key={keys.to_hex(PUBLIC)}\npreshared_key={'0' * 64}\nprotocol_version=1\n"
             "endpoint=10.0.0.2:51821\nlast_handshake_time_sec=1700000000\n"
             "last_handshake_time_nsec=500000000\ntx_bytes=92\nrx_bytes=180\n"
             "persistent_keepalive_interval=25\nallowed_ip=10.1.0.0/16\nallowed_ip=fd00::/64\n"
             f"public_key={keys.to_hex(HUB)}\nlast_handshake_time_sec=0\n"
             "last_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
             "persistent_keepalive_interval=0\nerrno=0\n\n")
    port, peers = parse_uapi_get(reply)
    assert port == 51820
    assert list(peers) == [PUBLIC, HUB]
    a = peers[PUBLIC]
    assert (a.last_handshake, a.rx_bytes, a.tx_bytes, a.endpoint, a.keepalive) == (
        1700000000.5, 180, 92, "10.0.0.2:51821", 25)
    assert a.allowed_ips == ("10.1.0.0/16", "fd00::/64")
    assert peers[HUB].last_handshake is None and peers[HUB].endpoint is None
    assert PRIVATE not in repr(peers)
    with pytest.raises(TunnelError, match="invalid argument"):
        parse_uapi_get("errno=-22\n\n")
    with pytest.raises(TunnelError, match="malformed"):
        parse_uapi_get("public_key=xyz\nerrno=0\n\n")


def test_wg_arguments_and_dump() -> None:
    peer = Peer(PUBLIC, ["10.1.0.0/16", "fd00::/64"], "[fd00::2]:51821", 25)
    assert wg_set_peer_args("oc-hub", peer) == [
        "set", "oc-hub", "peer", PUBLIC, "allowed-ips", "10.1.0.0/16,fd00::/64",
        "endpoint", "[fd00::2]:51821", "persistent-keepalive", "25"]
    assert wg_set_peer_args("oc-hub", Peer(PUBLIC)) == [
        "set", "oc-hub", "peer", PUBLIC, "allowed-ips", "", "persistent-keepalive", "off"]
    assert wg_remove_peer_args("oc-hub", PUBLIC) == ["set", "oc-hub", "peer", PUBLIC, "remove"]
    assert wg_configure_args("oc-hub", 51820) == [
        "set", "oc-hub", "private-key", "/dev/stdin", "listen-port", "51820"]
    dump = (f"{PRIVATE}\t{PUBLIC}\t51820\toff\n"
            f"{HUB}\t(none)\t10.0.0.2:51821\t10.1.0.0/16,fd00::/64\t1700000000\t180\t92\t25\n"
            f"{PUBLIC}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")
    port, peers = parse_wg_dump(dump)
    assert port == 51820
    assert peers[HUB].last_handshake == 1700000000.0 and peers[HUB].rx_bytes == 180
    assert peers[HUB].allowed_ips == ("10.1.0.0/16", "fd00::/64") and peers[HUB].keepalive == 25
    assert peers[PUBLIC].endpoint is None and peers[PUBLIC].last_handshake is None
    assert peers[PUBLIC].allowed_ips == ()


def test_gateway_config() -> None:
    text = gateway_config("100.96.0.2", HUB, "ctl.example.com:51820", "100.96.0.1/16",
                          post_up=["iptables -t nat -A POSTROUTING -s 100.96.0.1 -j MASQUERADE"])
    assert text == (
        "# Overcast tunnel gateway: the controller is the hub; this side dials out.\n"
        "[Interface]\n"
        "PrivateKey = __OVERCAST_PRIVATE_KEY__\n"
        "Address = 100.96.0.2/32\n"
        "PostUp = iptables -t nat -A POSTROUTING -s 100.96.0.1 -j MASQUERADE\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {HUB}\n"
        "Endpoint = ctl.example.com:51820\n"
        "AllowedIPs = 100.96.0.1/32\n"
        "PersistentKeepalive = 25\n")
    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    assert parsed["Peer"]["PublicKey"] == HUB
    six = gateway_config("fd00:ac::2/64", HUB, "[fd00::1]:51820", "fd00:ac::1", keepalive=0,
                         private_key_placeholder="@KEY@")
    assert "PrivateKey = @KEY@\nAddress = fd00:ac::2/64\n" in six
    assert "AllowedIPs = fd00:ac::1/128\n" in six and "PersistentKeepalive" not in six
    with pytest.raises(ValueError, match="public key"):
        gateway_config("100.96.0.2", "nope", "ctl:51820", "100.96.0.1")
    with pytest.raises(ValueError, match="endpoint"):
        gateway_config("100.96.0.2", HUB, "ctl", "100.96.0.1")
    with pytest.raises(ValueError, match="tunnel address"):
        gateway_config("gateway", HUB, "ctl:51820", "100.96.0.1")
