"""The agent's host inventory and its fingerprint."""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from agent.collect import inventory as inv_mod
from agent.collect.inventory import fingerprint, inventory, os_release, prefix_length
from overcast.agent.v1 import agent_pb2


def test_inventory_describes_this_host() -> None:
    inv = inventory("1.2.3")
    assert inv.agent_version == "1.2.3"
    assert inv.hostname == socket.gethostname()
    assert inv.os == "linux"
    assert inv.kernel == platform.release() and inv.arch == platform.machine()
    assert inv.cpus == os.cpu_count()
    assert inv.memory_bytes == psutil.virtual_memory().total > 0
    assert inv.swap_bytes == psutil.swap_memory().total
    assert abs(inv.boot_time.seconds - psutil.boot_time()) <= 1
    pretty = [ln.split("=", 1)[1].strip('"') for ln in Path("/etc/os-release").read_text().splitlines()
              if ln.startswith("PRETTY_NAME=")]
    assert inv.os_name == pretty[0]
    assert inv.os_version
    cpuinfo = Path("/proc/cpuinfo").read_text()
    if "model name" in cpuinfo:
        assert inv.cpu_model and inv.cpu_model in cpuinfo


def test_disks_are_physical_only() -> None:
    names = [d.name for d in inventory("x").disks]
    assert names == sorted(names)
    expect = sorted(n for n in os.listdir("/sys/block")
                    if os.path.exists(f"/sys/block/{n}/device") and not n.startswith(("loop", "ram", "zram")))
    assert names == expect
    assert not [n for n in names if n.startswith(("loop", "ram", "zram", "dm-"))]


def test_filesystems_include_root_and_no_pseudo() -> None:
    fss = {f.mountpoint: f for f in inventory("x").filesystems}
    assert "/" in fss and fss["/"].total_bytes > 0 and fss["/"].fstype
    assert not [f for f in fss.values() if f.fstype in {"proc", "sysfs", "tmpfs", "devtmpfs", "cgroup2"}]


def test_interfaces_with_mac_cidr_addresses_state_and_mtu() -> None:
    nics = {n.name: n for n in inventory("x").interfaces}
    assert list(nics) == sorted(psutil.net_if_addrs())
    lo = nics["lo"]
    assert "127.0.0.1/8" in lo.addresses and lo.up and lo.mtu > 0
    for n in nics.values():
        for a in n.addresses:
            ipaddress.ip_interface(a)  # "ip/prefix", no "%scope"
            assert "/" in a and "%" not in a
    stats = psutil.net_if_stats()
    for name, n in nics.items():
        if name in stats:
            assert n.up == stats[name].isup and n.mtu == stats[name].mtu


def test_prefix_length() -> None:
    assert prefix_length("255.255.255.0", 4) == 24
    assert prefix_length("255.0.0.0", 4) == 8
    assert prefix_length("ffff:ffff:ffff:ffff::", 6) == 64
    assert prefix_length(None, 4) == 32 and prefix_length(None, 6) == 128
    assert prefix_length("garbage", 6) == 128


def test_interface_addresses_from_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    A = namedtuple("A", "family address netmask broadcast ptp")
    S = namedtuple("S", "isup duplex speed mtu flags")
    monkeypatch.setattr(inv_mod.psutil, "net_if_addrs", lambda: {
        "eth0": [A(socket.AF_INET6, "fe80::1%eth0", "ffff:ffff:ffff:ffff::", None, None),
                 A(socket.AF_INET, "10.0.0.5", "255.255.255.0", None, None),
                 A(psutil.AF_LINK, "02:00:00:00:00:01", None, None, None)],
    })
    monkeypatch.setattr(inv_mod.psutil, "net_if_stats", lambda: {"eth0": S(False, 0, 0, 9000, "")})
    (nic,) = inv_mod.interfaces()
    assert nic.name == "eth0" and nic.mac == "02:00:00:00:00:01"
    assert list(nic.addresses) == ["10.0.0.5/24", "fe80::1/64"]
    assert not nic.up and nic.mtu == 9000


def test_os_release_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "os-release"
    f.write_text('# comment\nNAME="Ubuntu"\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\nVERSION_ID=24.04\n'
                 "ID=ubuntu\nBROKEN='x\n\n")
    monkeypatch.setattr(inv_mod, "_OS_RELEASE", (tmp_path / "missing", f))
    rel = os_release()
    assert rel["PRETTY_NAME"] == "Ubuntu 24.04.1 LTS" and rel["VERSION_ID"] == "24.04"
    assert rel["BROKEN"] == "x"
    inv = inventory("x")
    assert (inv.os_name, inv.os_version) == ("Ubuntu 24.04.1 LTS", "24.04")
    monkeypatch.setattr(inv_mod, "_OS_RELEASE", (tmp_path / "missing",))
    assert os_release() == {} and inventory("x").os_name == ""


def test_cpu_model_falls_back_for_arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nBogoMIPS\t: 108.00\n\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    monkeypatch.setattr(inv_mod, "_CPUINFO", f)
    assert inv_mod.cpu_model() == "Raspberry Pi 4 Model B Rev 1.4"
    f.write_text("model name\t: Intel(R) Xeon(R)\nmodel name\t: other\n")
    assert inv_mod.cpu_model() == "Intel(R) Xeon(R)"


def _sample() -> agent_pb2.Inventory:
    return agent_pb2.Inventory(
        hostname="web1", os="linux", cpus=4, memory_bytes=8 << 30, agent_version="1",
        disks=[agent_pb2.Disk(name="sda"), agent_pb2.Disk(name="sdb")],
        filesystems=[agent_pb2.Filesystem(mountpoint="/", device="/dev/sda1", fstype="ext4", total_bytes=100)],
        interfaces=[agent_pb2.NetInterface(name="eth0", mac="m", addresses=["10.0.0.5/24", "fe80::1/64"],
                                           up=True, mtu=1500),
                    agent_pb2.NetInterface(name="lo", addresses=["127.0.0.1/8"], up=True, mtu=65536)],
    )


def test_fingerprint_is_stable_for_the_same_host() -> None:
    assert fingerprint(inventory("x")) == fingerprint(inventory("x"))
    a = _sample()
    assert len(fingerprint(a)) == 64 and fingerprint(a) == fingerprint(_sample())


def test_fingerprint_ignores_what_moves_by_itself_and_order() -> None:
    base = fingerprint(_sample())
    b = _sample()
    b.boot_time.seconds = 1_700_000_001
    b.filesystems[0].total_bytes = 12345
    b.disks.reverse()
    b.interfaces.reverse()
    b.interfaces[1].addresses.reverse()
    before = b.SerializeToString()
    assert fingerprint(b) == base
    assert b.SerializeToString() == before  # the inventory itself is left as it was


@pytest.mark.parametrize("change", [
    lambda i: i.interfaces[0].addresses.append("10.0.0.6/24"),
    lambda i: i.disks.add(name="sdc"),
    lambda i: i.filesystems.add(mountpoint="/data", device="/dev/sdc", fstype="xfs"),
    lambda i: setattr(i, "hostname", "web2"),
    lambda i: setattr(i.interfaces[0], "up", False),
    lambda i: setattr(i, "memory_bytes", 16 << 30),
    lambda i: setattr(i, "agent_version", "2"),
])
def test_fingerprint_changes_with_a_real_change(change: object) -> None:
    i = _sample()
    change(i)  # type: ignore[operator]
    assert fingerprint(i) != fingerprint(_sample())


def test_firmware_ids_come_from_dmi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inv_mod, "_DMI", tmp_path)
    inv = inventory("x")
    assert inv.system_uuid == "" and inv.instance_id == ""  # no DMI (containers, this sandbox)
    (tmp_path / "product_uuid").write_text("6695EB01-F6A4-8304-79AA-97F2502E193F\n")
    (tmp_path / "board_asset_tag").write_text("i-0123456789abcdef0\n")
    inv = inventory("x")
    assert inv.system_uuid == "6695eb01-f6a4-8304-79aa-97f2502e193f"
    assert inv.instance_id == "i-0123456789abcdef0"
    (tmp_path / "board_asset_tag").write_text("Default string\n")  # what most boards say
    assert inventory("x").instance_id == ""
