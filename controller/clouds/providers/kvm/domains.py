"""libvirt domains as Overcast machines, the sizes offered, and the domain XML for a new guest.

States come from ``virDomainGetState`` itself, not libcloud's map (which folds paused and
shut off into TERMINATED): a paused guest (what ``suspend`` does: vCPUs stopped, memory kept)
is ``paused``, one suspended by guest power management (S3) is ``suspended``, a shut-off one
``stopped``, a crashed one ``error``.

The domain XML builder (:func:`domain_xml`) makes a small, safe guest: a checked name, vCPUs,
memory, ACPI (so ``stop`` can ask the guest to shut down), a serial console, the hypervisor's
own domain type and arch, and Overcast's tags in ``<metadata>``. It adds no disk, network or
device from the request: a path or device from a user would reach the hypervisor host's
files, so disks and networks are attached by the host's own tooling for now (a later issue
can clone a volume from a storage pool as the image)."""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from controller.clouds.providers.base import MachineRecord, SizeRecord
from controller.errors import Invalid

# virDomainState -> Overcast machine state
STATES = {
    0: "unknown",    # VIR_DOMAIN_NOSTATE
    1: "running",    # VIR_DOMAIN_RUNNING
    2: "running",    # VIR_DOMAIN_BLOCKED: running, waiting on a resource
    3: "paused",     # VIR_DOMAIN_PAUSED
    4: "stopping",   # VIR_DOMAIN_SHUTDOWN: being shut down
    5: "stopped",    # VIR_DOMAIN_SHUTOFF
    6: "error",      # VIR_DOMAIN_CRASHED
    7: "suspended",  # VIR_DOMAIN_PMSUSPENDED
}
PAUSED, SHUTOFF, PMSUSPENDED = 3, 5, 7
RUNNING = (1, 2)

TAGS_NS = "https://overcast.dev/xmlns/libvirt/tags/1"
ET.register_namespace("overcast", TAGS_NS)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_TAG_TEXT = 255
MAX_TAGS = 50


@dataclass(frozen=True)
class Shape:
    """A size offered for new guests (libvirt has no catalogue: these are synthesized)."""

    id: str
    cpus: int
    ram_mb: int


SHAPES = (Shape("1cpu-512mb", 1, 512), Shape("1cpu-1gb", 1, 1024), Shape("2cpu-2gb", 2, 2048),
          Shape("2cpu-4gb", 2, 4096), Shape("4cpu-8gb", 4, 8192), Shape("8cpu-16gb", 8, 16384))


def sizes_for(max_cpus: int, max_ram_mb: int) -> list[SizeRecord]:
    """The shapes that fit the largest hypervisor (``extra.fits`` is always true then)."""
    return [SizeRecord(external_id=s.id, name=f"{s.cpus} vCPU, {s.ram_mb} MiB", cpus=s.cpus,
                       ram_mb=s.ram_mb, price_per_hour=None, extra={"synthesized": True})
            for s in SHAPES if s.cpus <= max_cpus and s.ram_mb <= max_ram_mb]


def shape(size_id: str, extra: dict[str, Any]) -> Shape:
    """The requested shape: a size id, or ``extra`` ``{"cpus": n, "ram_mb": m}``."""
    if size_id:
        for s in SHAPES:
            if s.id == size_id:
                return s
        raise Invalid(f"kvm has no size {size_id!r}; one of: {', '.join(s.id for s in SHAPES)}",
                      field="size")
    try:
        cpus, ram = int(extra.get("cpus", 1)), int(extra.get("ram_mb", 512))
    except (TypeError, ValueError):
        raise Invalid("cpus and ram_mb must be numbers", field="extra") from None
    if not 1 <= cpus <= 256:
        raise Invalid("cpus must be between 1 and 256", field="extra")
    if not 64 <= ram <= 4 * 1024 * 1024:
        raise Invalid("ram_mb must be between 64 and 4194304", field="extra")
    return Shape(f"{cpus}cpu-{ram}mb", cpus, ram)


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise Invalid("a KVM guest name is 1-63 letters, digits, '.', '_' or '-', starting "
                      "with a letter or digit", field="name")
    return name


def domain_xml(name: str, uuid: str, s: Shape, domain_type: str, arch: str,
               tags: dict[str, str]) -> str:
    """The XML of a new, diskless guest (see the module docstring for what it holds). The
    explicit ``uuid`` makes libvirt refuse a name already in use instead of redefining (and
    so overwriting) that guest."""
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = check_name(name)
    ET.SubElement(dom, "uuid").text = uuid
    ET.SubElement(dom, "description").text = "created by Overcast"
    if tags:
        meta = ET.SubElement(ET.SubElement(dom, "metadata"), f"{{{TAGS_NS}}}tags")
        for key, value in list(tags.items())[:MAX_TAGS]:
            ET.SubElement(meta, f"{{{TAGS_NS}}}tag", name=str(key)[:_TAG_TEXT]).text = (
                str(value)[:_TAG_TEXT])
    ET.SubElement(dom, "memory", unit="MiB").text = str(s.ram_mb)
    ET.SubElement(dom, "vcpu").text = str(s.cpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch=arch).text = "hvm"
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    if domain_type != "test":
        devices = ET.SubElement(dom, "devices")
        ET.SubElement(ET.SubElement(devices, "serial", type="pty"), "target", port="0")
        ET.SubElement(ET.SubElement(devices, "console", type="pty"), "target", type="serial")
    return ET.tostring(dom, encoding="unicode")


@dataclass
class DomainFacts:
    """What the domain XML says beyond ``info()``."""

    macs: list[str]
    tags: dict[str, str]
    description: str


def read_xml(xml: str) -> DomainFacts:
    """MACs, Overcast tags and description from a domain's XML (libvirt's own output)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return DomainFacts([], {}, "")
    macs = [m.get("address", "").lower() for m in root.findall("devices/interface/mac")]
    tags = {t.get("name", ""): (t.text or "")
            for t in root.findall(f"metadata/{{{TAGS_NS}}}tags/{{{TAGS_NS}}}tag") if t.get("name")}
    return DomainFacts([m for m in macs if m], tags, (root.findtext("description") or "")[:500])


def split_ips(addresses: list[str]) -> tuple[list[str], list[str]]:
    """(public, private) by address scope; unparsable ones are dropped."""
    public: list[str] = []
    private: list[str] = []
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local:
            continue
        (public if ip.is_global else private).append(a)
    return public, private


def to_machine(dom: Any, host_id: str, addresses: list[str]) -> MachineRecord:
    """One guest. ``dom`` is a ``libvirt.virDomain``; blocking libvirt calls."""
    state, reason = dom.state()
    _, max_kib, mem_kib, vcpus, cpu_time = dom.info()
    facts = read_xml(dom.XMLDesc(0))
    public, private = split_ips(addresses)
    active = bool(dom.isActive())
    extra: dict[str, Any] = {
        "kind": "guest", "libvirt_state": int(state), "libvirt_state_reason": int(reason),
        "memory_mb": int(mem_kib // 1024), "max_memory_mb": int(max_kib // 1024),
        "cpu_time_ns": int(cpu_time), "persistent": bool(dom.isPersistent()),
        "os_type": str(dom.OSType()),
    }
    if active:
        extra["libvirt_id"] = int(dom.ID())
    if facts.description:
        extra["description"] = facts.description
    size = next((s.id for s in SHAPES if s.cpus == vcpus and s.ram_mb * 1024 == max_kib), "")
    return MachineRecord(
        external_id=str(dom.UUIDString()), name=str(dom.name()),
        state=STATES.get(int(state), "unknown"), public_ips=public, private_ips=private,
        size=size, location=host_id, cores=int(vcpus), tags=facts.tags, parent=host_id, macs=facts.macs,
        extra=extra)
