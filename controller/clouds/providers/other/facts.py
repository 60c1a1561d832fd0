"""What a host says about itself: the POSIX sh script run over SSH and its output parsed.

The script is fed on stdin to ``sh -s`` so the login shell (bash, fish, csh) does not matter;
each section starts with an ``@name`` line and every probe tolerates a missing tool."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

SCRIPT = r"""export LC_ALL=C
echo @hostname; hostname 2>/dev/null || cat /proc/sys/kernel/hostname 2>/dev/null || uname -n
echo @uname; uname -s -r -m
echo @os; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
echo @cores; getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || grep -c '^processor' /proc/cpuinfo 2>/dev/null
echo @memory; grep '^MemTotal:' /proc/meminfo 2>/dev/null || sysctl -n hw.physmem 2>/dev/null
echo @uptime; cut -d' ' -f1 /proc/uptime 2>/dev/null
echo @links; for d in /sys/class/net/*; do [ -r "$d/address" ] && echo "${d##*/} $(cat "$d/address")"; done 2>/dev/null
echo @iplinks; ip -o link show 2>/dev/null
echo @addrs; ip -o addr show 2>/dev/null
echo @end
"""

_NO_MAC = "00:00:00:00:00:00"


@dataclass
class Facts:
    """One host's facts; ``extra()`` is what the machine document keeps."""

    hostname: str = ""
    os_type: str = ""              # uname -s, lower case: linux, freebsd, ...
    os: str = ""                   # /etc/os-release PRETTY_NAME
    os_id: str = ""
    os_version: str = ""
    kernel: str = ""
    arch: str = ""
    cores: int = 0
    memory_mb: int = 0
    uptime_s: int = 0
    macs: list[str] = field(default_factory=list)
    public_ips: list[str] = field(default_factory=list)
    private_ips: list[str] = field(default_factory=list)

    def extra(self) -> dict[str, Any]:
        out = asdict(self)
        for moved in ("hostname", "os_type", "cores", "macs", "public_ips", "private_ips"):
            out.pop(moved)  # these have their own MachineRecord fields
        return out


def _sections(output: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@") and line[1:].isalpha():
            current = out.setdefault(line[1:], [])
        elif current is not None and line.strip():
            current.append(line.rstrip())
    return out


def _int(lines: list[str]) -> int:
    for line in lines:
        try:
            return int(float(line.split()[0]))
        except (ValueError, IndexError):
            continue
    return 0


def _os_release(lines: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.isidentifier():
            values[name] = value.strip().strip("\"'")[:200]
    return values


def _memory_mb(lines: list[str]) -> int:
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "MemTotal:" and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1]) // 1024  # kB
        if parts and parts[0].isdigit():
            return int(parts[0]) // (1024 * 1024)  # bytes (BSD sysctl)
    return 0


def _macs(links: list[str], iplinks: list[str]) -> list[str]:
    macs: list[str] = []
    for line in links:
        parts = line.split()
        if len(parts) == 2 and parts[0] != "lo":
            macs.append(parts[1].lower())
    if not macs:  # no /sys: read "link/ether xx:.." from `ip -o link`
        for line in iplinks:
            parts = line.split()
            if "link/ether" in parts and parts.index("link/ether") + 1 < len(parts):
                macs.append(parts[parts.index("link/ether") + 1].lower())
    good = [m for m in macs if m.count(":") == 5 and m != _NO_MAC]
    return list(dict.fromkeys(good))


def _addresses(lines: list[str]) -> tuple[list[str], list[str]]:
    public: list[str] = []
    private: list[str] = []
    for line in lines:
        parts = line.split()
        for family in ("inet", "inet6"):
            if family in parts and parts.index(family) + 1 < len(parts):
                text = parts[parts.index(family) + 1].split("/")[0]
                try:
                    addr = ipaddress.ip_address(text)
                except ValueError:
                    continue
                if addr.is_loopback or addr.is_link_local or addr.is_multicast:
                    continue
                (public if addr.is_global else private).append(str(addr))
    return list(dict.fromkeys(public)), list(dict.fromkeys(private))


def parse(output: str) -> Facts:
    """Facts from the script's output; what is missing stays empty."""
    s = _sections(output)
    uname = (s.get("uname") or [""])[0].split()
    release = _os_release(s.get("os", []))
    public, private = _addresses(s.get("addrs", []))
    return Facts(
        hostname=(s.get("hostname") or [""])[0].strip()[:255],
        os_type=uname[0].lower() if uname else "",
        kernel=uname[1] if len(uname) > 1 else "",
        arch=uname[2] if len(uname) > 2 else "",
        os=release.get("PRETTY_NAME", release.get("NAME", "")),
        os_id=release.get("ID", ""),
        os_version=release.get("VERSION_ID", ""),
        cores=_int(s.get("cores", [])),
        memory_mb=_memory_mb(s.get("memory", [])),
        uptime_s=_int(s.get("uptime", [])),
        macs=_macs(s.get("links", []), s.get("iplinks", [])),
        public_ips=public,
        private_ips=private,
    )
