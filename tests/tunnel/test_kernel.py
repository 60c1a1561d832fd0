"""tunnel.kernel and tunnel.backend.choose: the kernel backend's commands, recorded by a fake
runner (this machine has no WireGuard module, so no real kernel interface is made here), and
the choice of backend."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

import pytest

from tunnel import keys
from tunnel.backend import KernelWireguard, WireguardGo, choose, kernel_available
from tunnel.config import Peer, TunnelError

PRIVATE = keys.generate_private()
PEER = keys.public_of(keys.generate_private())


class Recorder:
    """Records each command; answers ``wg show ... dump`` and ``ip link show`` as told."""

    def __init__(self, exists: bool = False, dump: str = "") -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.exists, self.dump = exists, dump

    def __call__(self, argv: Sequence[str], stdin: str | None) -> str:
        argv = list(argv)
        self.calls.append((argv, stdin))
        if "show" in argv and "link" in argv and not self.exists:
            raise TunnelError("Device does not exist")
        if argv[-1] == "dump":
            return self.dump
        return ""

    @property
    def argvs(self) -> list[list[str]]:
        return [a for a, _ in self.calls]


def test_commands_before_and_at_up() -> None:
    r = Recorder()
    k = KernelWireguard("oc-hub", "ns1", runner=r)
    k.configure(PRIVATE, 51820)
    k.set_peer(Peer(PEER, ["10.1.0.0/16"], "10.0.0.2:51821", 25))
    k.set_address("100.96.0.1/16")
    k.add_route("10.1.0.0/16")
    assert r.calls == []  # recorded, applied at up()
    k.up()
    assert r.argvs == [
        ["ip", "-n", "ns1", "link", "show", "dev", "oc-hub"],
        ["ip", "-n", "ns1", "link", "add", "dev", "oc-hub", "type", "wireguard"],
        ["ip", "-n", "ns1", "link", "set", "dev", "oc-hub", "up"],
        ["ip", "netns", "exec", "ns1", "wg", "set", "oc-hub", "private-key", "/dev/stdin",
         "listen-port", "51820"],
        ["ip", "netns", "exec", "ns1", "wg", "set", "oc-hub", "peer", PEER, "allowed-ips",
         "10.1.0.0/16", "endpoint", "10.0.0.2:51821", "persistent-keepalive", "25"],
        ["ip", "-n", "ns1", "address", "replace", "100.96.0.1/16", "dev", "oc-hub"],
        ["ip", "-n", "ns1", "route", "replace", "10.1.0.0/16", "dev", "oc-hub"],
    ]
    # the private key goes on standard input only
    assert r.calls[3][1] == PRIVATE
    assert not any(PRIVATE in " ".join(a) for a in r.argvs)


def test_commands_when_up() -> None:
    r = Recorder(exists=True, dump=f"{PRIVATE}\t{keys.public_of(PRIVATE)}\t51820\toff\n"
                                   f"{PEER}\t(none)\t10.0.0.2:51821\t10.1.0.0/16\t1700000000\t10\t20\t25\n")
    k = KernelWireguard("oc-hub", runner=r)
    k.up()
    assert ["ip", "link", "add", "dev", "oc-hub", "type", "wireguard"] not in r.argvs  # taken as is
    r.calls.clear()
    k.set_address("100.96.0.1/16", "fd00:ac::1/64")
    k.set_address("100.96.0.1/16")
    k.remove_peer(PEER)
    k.remove_route("10.1.0.0/16")
    stats = k.peers()
    k.down()
    assert r.argvs == [
        ["ip", "address", "replace", "100.96.0.1/16", "dev", "oc-hub"],
        ["ip", "address", "replace", "fd00:ac::1/64", "dev", "oc-hub"],
        ["ip", "address", "replace", "100.96.0.1/16", "dev", "oc-hub"],
        ["ip", "address", "del", "fd00:ac::1/64", "dev", "oc-hub"],
        ["wg", "set", "oc-hub", "peer", PEER, "remove"],
        ["ip", "route", "del", "10.1.0.0/16", "dev", "oc-hub"],
        ["wg", "show", "oc-hub", "dump"],
        ["ip", "link", "show", "dev", "oc-hub"],
        ["ip", "link", "del", "dev", "oc-hub"],
    ]
    assert stats[PEER].last_handshake == 1700000000.0 and stats[PEER].tx_bytes == 20
    with pytest.raises(TunnelError, match="not up"):
        k.peers()


def test_bad_arguments_run_nothing() -> None:
    r = Recorder(exists=True)
    k = KernelWireguard("oc-hub", runner=r)
    k.up()
    r.calls.clear()
    with pytest.raises(ValueError):
        k.configure("not a key")
    with pytest.raises(ValueError):
        k.remove_peer("not a key")
    with pytest.raises(ValueError, match="host bits"):
        k.add_route("10.1.2.3/16")
    with pytest.raises(ValueError, match="prefix length"):
        k.set_address("hub")
    assert r.calls == []
    with pytest.raises(ValueError, match="interface name"):
        KernelWireguard("a-name-too-long-for-linux")


def test_kernel_probe() -> None:
    ok = Recorder(exists=True)
    assert kernel_available("ns1", runner=ok)
    add, show, delete = ok.argvs
    assert add[:4] == ["ip", "-n", "ns1", "link"] and add[-2:] == ["type", "wireguard"]
    assert delete[-3:] == ["del", "dev", add[6]] and show[-1] == add[6]

    def no_module(argv: Sequence[str], stdin: str | None) -> str:
        raise TunnelError("Error: Unknown device type.")

    assert not kernel_available(runner=no_module)


def test_choose_here_is_wireguard_go() -> None:
    if kernel_available():
        pytest.skip("this machine has the WireGuard module")
    if shutil.which("wireguard-go") is None:
        with pytest.raises(TunnelError, match="wireguard-go is not installed"):
            choose("oc-probe")
        return
    assert isinstance(choose("oc-probe"), WireguardGo)
