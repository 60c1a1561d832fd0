"""The host's inventory (what it is, not how busy) and a fingerprint to resend it on change."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import platform
import shlex
import socket
from pathlib import Path

import psutil

from agent.collect.metrics import VIRTUAL_BLOCK_PREFIXES, real_filesystems
from overcast.agent.v1 import agent_pb2

log = logging.getLogger(__name__)

_OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
_SYS_BLOCK = Path("/sys/block")
_CPUINFO = Path("/proc/cpuinfo")
_DMI = Path("/sys/class/dmi/id")


def _dmi(name: str) -> str:
    """A DMI/SMBIOS field ("" when absent or unreadable: product_uuid needs root)."""
    try:
        return (_DMI / name).read_text(errors="replace").strip()[:128]
    except OSError:
        return ""


def _instance_id() -> str:
    """The cloud's id for this host where the firmware carries it: EC2 puts the instance id
    in the board asset tag."""
    tag = _dmi("board_asset_tag")
    return tag if tag.startswith("i-") and tag[2:].isalnum() else ""


def inventory(agent_version: str) -> agent_pb2.Inventory:
    """What this host is. Lists are sorted so the same host gives the same message; anything
    that cannot be read is left empty (never raises for a missing file or a denied call)."""
    release = os_release()
    inv = agent_pb2.Inventory(
        hostname=socket.gethostname(),
        os=platform.system().lower(),
        os_name=release.get("PRETTY_NAME", ""),
        os_version=release.get("VERSION_ID", ""),
        kernel=platform.release(),
        arch=platform.machine(),
        cpus=psutil.cpu_count() or os.cpu_count() or 0,
        cpu_model=cpu_model(),
        agent_version=agent_version,
        system_uuid=_dmi("product_uuid").lower(),
        instance_id=_instance_id(),
    )
    try:
        inv.memory_bytes = psutil.virtual_memory().total
        inv.swap_bytes = psutil.swap_memory().total
    except Exception as e:  # a /proc file missing in a container
        log.warning("inventory: memory unknown: %s", e)
    try:
        inv.boot_time.seconds = int(psutil.boot_time())
    except Exception as e:
        log.warning("inventory: boot time unknown: %s", e)
    inv.disks.extend(agent_pb2.Disk(name=n) for n in physical_disks())
    for m in real_filesystems():
        try:
            st = os.statvfs(m.path)
        except OSError:
            total = 0
        else:
            total = st.f_blocks * st.f_frsize
        inv.filesystems.append(
            agent_pb2.Filesystem(
                mountpoint=m.path, device=m.device, fstype=m.fstype, total_bytes=total
            )
        )
    inv.interfaces.extend(interfaces())
    return inv


def fingerprint(inv: agent_pb2.Inventory) -> str:
    """SHA-256 (hex) of what identifies the inventory: equal for the same host as long as
    nothing real changed, whatever the order of its lists. Leaves out what moves without
    anything changing: boot_time (recomputed from the clock, it can shift by a second; a
    reboot restarts the agent, whose Hello carries the inventory anyway) and filesystem sizes
    (a ZFS or btrfs dataset's size follows the pool's use)."""
    c = agent_pb2.Inventory()
    c.CopyFrom(inv)
    c.ClearField("boot_time")
    for fs in c.filesystems:
        fs.ClearField("total_bytes")
    c.disks.sort(key=lambda d: d.name)
    c.filesystems.sort(key=lambda f: (f.mountpoint, f.device))
    c.interfaces.sort(key=lambda i: i.name)
    for i in c.interfaces:
        i.addresses.sort()
    return hashlib.sha256(c.SerializeToString(deterministic=True)).hexdigest()


def os_release() -> dict[str, str]:
    """/etc/os-release as a dict (shell quoting undone), empty if there is none."""
    for path in _OS_RELEASE:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        out: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if not sep or line.lstrip().startswith("#"):
                continue
            try:
                words = shlex.split(value)
            except ValueError:  # unbalanced quotes: take it as written
                words = [value.strip("\"'")]
            out[key.strip()] = " ".join(words)
        return out
    return {}


def cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo (x86); ARM has "Model" or nothing."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor()
    fallback = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key == "model name":
            return value.strip()
        if sep and key == "Model" and not fallback:
            fallback = value.strip()
    return fallback or platform.processor()


def physical_disks() -> list[str]:
    """Block devices backed by hardware (or a hypervisor's virtual disk): those with a
    device link in /sys/block; LVM, md, loop, RAM and zram devices have none."""
    try:
        names = os.listdir(_SYS_BLOCK)
    except OSError:
        return []
    return sorted(
        n for n in names
        if not n.startswith(VIRTUAL_BLOCK_PREFIXES) and (_SYS_BLOCK / n / "device").exists()
    )


def prefix_length(netmask: str | None, version: int) -> int:
    """A netmask's prefix length ("255.255.255.0" is 24); no mask means a host address."""
    bits = 32 if version == 4 else 128
    if not netmask:
        return bits
    try:
        return bin(int(ipaddress.ip_address(netmask))).count("1")
    except ValueError:
        return bits


def interfaces() -> list[agent_pb2.NetInterface]:
    """Network interfaces by name: MAC, addresses as "ip/prefix", up, MTU."""
    try:
        addrs = psutil.net_if_addrs()
    except Exception as e:
        log.warning("inventory: interfaces unknown: %s", e)
        return []
    try:
        stats = psutil.net_if_stats()
    except Exception as e:  # the addresses are still worth sending
        log.warning("inventory: interface state unknown: %s", e)
        stats = {}
    out = []
    for name in sorted(addrs):
        nic = agent_pb2.NetInterface(name=name)
        addresses = []
        for a in addrs[name]:
            if a.family == psutil.AF_LINK:
                nic.mac = a.address or ""
            elif a.family in (socket.AF_INET, socket.AF_INET6):
                ip = a.address.split("%", 1)[0]  # fe80::1%eth0: the scope is the interface
                version = 4 if a.family == socket.AF_INET else 6
                addresses.append(f"{ip}/{prefix_length(a.netmask, version)}")
        nic.addresses.extend(sorted(addresses))
        st = stats.get(name)
        if st is not None:
            nic.up = bool(st.isup)
            nic.mtu = int(st.mtu)
        out.append(nic)
    return out
