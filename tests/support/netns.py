"""Hosts made of network namespaces: one bridge on the root side (the controller's address
on it), and per host a namespace joined to the bridge by a veth pair, with its own address.
Traffic stays on this machine. Needs root and iproute2; ``available()`` says why not."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field


def available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"ocprobe{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@dataclass
class Host:
    name: str        # the namespace
    address: str     # its address on the bridge
    veth: str        # root-side end of its link

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def link(self, up: bool) -> None:
        """Cut the host off (down) or restore it (up), as a cable pulled and put back."""
        _ip("link", "set", self.veth, "up" if up else "down")


@dataclass
class Lab:
    """A bridge with ``gateway`` on the root side; hosts 10.<n>.0.2, .3, ... on it."""

    subnet: int = 251
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    hosts: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"ocbr{self.tag}"

    @property
    def gateway(self) -> str:
        return f"10.{self.subnet}.0.1"

    def __enter__(self) -> Lab:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_host(self) -> Host:
        n = len(self.hosts) + 2
        ns = f"oc{self.tag}h{n}"
        root_end, ns_end = f"ocv{self.tag}{n}", f"ocp{self.tag}{n}"
        _ip("netns", "add", ns)
        _ip("link", "add", root_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", root_end, "master", self.bridge)
        _ip("link", "set", root_end, "up")
        _ip("link", "set", ns_end, "netns", ns)
        address = f"10.{self.subnet}.0.{n}"
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", ns_end)
        _ip("-n", ns, "link", "set", ns_end, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", self.gateway)
        host = Host(ns, address, root_end)
        self.hosts.append(host)
        return host

    def add_private(self, behind: Host, subnet: str) -> Host:
        """A host whose only link is a veth pair to ``behind`` (not to the bridge): the
        private network ``subnet`` (a /24 or larger), ``behind`` at its first address with
        forwarding on, the new host at the second with a default route via ``behind``. The
        root namespace has no route to it. Its ``veth`` is the end inside ``behind``
        (``link()`` does not apply); both ends go with the namespaces."""
        import ipaddress

        net = ipaddress.ip_network(subnet)
        first, second = (str(a) for a in list(net.hosts())[:2])
        n = len(self.hosts) + 2
        ns = f"oc{self.tag}p{n}"
        near, far = f"ocq{self.tag}{n}", f"ocr{self.tag}{n}"
        _ip("netns", "add", ns)
        _ip("-n", behind.name, "link", "add", near, "type", "veth", "peer", "name", far, "netns", ns)
        _ip("-n", behind.name, "addr", "add", f"{first}/{net.prefixlen}", "dev", near)
        _ip("-n", behind.name, "link", "set", near, "up")
        subprocess.run(behind.cmd("sysctl", "-qw", "net.ipv4.ip_forward=1"), check=True)
        _ip("-n", ns, "addr", "add", f"{second}/{net.prefixlen}", "dev", far)
        _ip("-n", ns, "link", "set", far, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", first)
        host = Host(ns, second, near)
        self.hosts.append(host)
        return host

    def __exit__(self, *exc: object) -> None:
        for h in self.hosts:
            _ip("netns", "del", h.name, check=False)
            _ip("link", "del", h.veth, check=False)
        _ip("link", "del", self.bridge, check=False)
