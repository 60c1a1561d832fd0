"""The vSphere adapter (vCenter or a standalone ESXi host) over libcloud's ``VSphereNodeDriver``
(SOAP, through pyvmomi).

pyvmomi is not a dependency of Overcast: without it every call raises :class:`Unsupported`
saying "the vSphere driver needs pyvmomi: pip install pyvmomi". The CA certificate
(``ca_cert_file``, PEM text) is written to a private file only while the driver connects
(pyvmomi reads it into its SSL context then); without it the system's CAs verify the server.

Machines: the VMs (templates excluded, id = instance UUID) and the ESXi hosts they run on (id
``host:<name>``, every VM's ``parent``; ``location`` is the host's name, as in
``list_locations``). Images are the templates; locations are hosts and DRS clusters. Sizes
are not offered (vSphere has none). Suspend is not offered: libcloud's SOAP driver has none."""

from __future__ import annotations

import importlib.util
import re
from typing import Any
from urllib.parse import urlsplit

from controller.clouds.providers.base import JSON, Capability, MachineRecord, Unsupported
from controller.clouds.providers.docker.secretfiles import SecretFiles
from controller.clouds.providers.libcloud_compute import LibcloudComputeAdapter, json_safe
from controller.errors import Invalid, ProviderError

PYVMOMI_MESSAGE = "the vSphere driver needs pyvmomi: pip install pyvmomi"
_HOST = re.compile(r"^[A-Za-z0-9._:\-]{1,255}$")
HOST_STATES = {"connected": "running", "disconnected": "unreachable",
               "notResponding": "unreachable"}


def host_port(value: str) -> tuple[str, int]:
    """``vc.example``, ``https://vc.example/sdk`` or ``vc.example:8443`` -> (host, port)."""
    text = value.split("://", 1)[1] if "://" in value else value
    try:
        parts = urlsplit("//" + text)
        host, port = parts.hostname or "", parts.port or 443
    except ValueError:
        host, port = "", 0
    if not host or not _HOST.match(host) or parts.username is not None:
        raise Invalid("host must be the vCenter or ESXi host name or address (an optional "
                      ":port)", field="host")
    return host, port


def have_pyvmomi() -> bool:
    return importlib.util.find_spec("pyVmomi") is not None


def driver_class() -> Any:
    from libcloud.compute.drivers.vsphere import VSphereNodeDriver

    return VSphereNodeDriver


class VsphereAdapter(LibcloudComputeAdapter):
    provider = "vsphere"
    credential = "password"
    capabilities = frozenset({Capability.MACHINES, Capability.START, Capability.STOP,
                              Capability.REBOOT, Capability.DESTROY, Capability.IMAGES,
                              Capability.LOCATIONS})

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        super().__init__(config, secrets, timeout)
        host = str(config.get("host") or "").strip()
        if not host:
            raise Invalid("host (the vCenter or ESXi address) is required", field="host")
        if not str(config.get("username") or "") or not secrets.get("password"):
            raise Invalid("username and password are required", field="username")
        self.host, self.port = host_port(host)

    def driver(self) -> Any:
        if not have_pyvmomi():
            raise Unsupported(PYVMOMI_MESSAGE, provider=self.provider)
        ca = self.secrets.get("ca_cert_file", "").strip()
        files = SecretFiles()
        try:
            ca_path = files.write("ca.pem", ca) if ca else None
            return driver_class()(host=self.host, username=str(self.config["username"]),
                                  password=self.secrets["password"], port=self.port,
                                  ca_cert=ca_path)
        finally:
            files.close()  # pyvmomi's SSL context holds the CA now

    # -- translation ---------------------------------------------------------------------------
    def to_machine(self, node: Any) -> MachineRecord:
        m = super().to_machine(node)
        extra = getattr(node, "extra", {}) or {}
        host = str(extra.get("host") or "")
        if host:
            m.parent, m.location = f"host:{host}", host
        m.cores = int(extra.get("cpus") or 0)
        m.os_type = "windows" if extra.get("os_type") == "windows" else "unix"
        m.extra["kind"] = "vm"
        return m

    def list_machines(self) -> list[MachineRecord]:
        vms = [self.to_machine(n) for n in self._call("listing machines", self.conn.list_nodes)]
        hosts: dict[str, MachineRecord] = {}
        try:
            locations = self._call("listing hosts", self.conn.list_locations)
        except ProviderError:  # hosts are context: the VMs still list without them
            locations = []
        for loc in locations:
            extra = dict(getattr(loc, "extra", {}) or {})
            if extra.get("type") != "host":
                continue
            cpu: dict[str, Any] = extra["cpu"] if isinstance(extra.get("cpu"), dict) else {}
            ram = extra.get("ram")
            record_extra = {k: json_safe(v) for k, v in extra.items()
                            if k in ("hypervisor", "vendor", "model", "uptime", "state")}
            record_extra["kind"] = "hypervisor"
            if isinstance(ram, int):
                record_extra["memory_mb"] = ram // (1024 * 1024)
            hosts[f"host:{loc.name}"] = MachineRecord(
                external_id=f"host:{loc.name}", name=str(loc.name), hostname=str(loc.name),
                state=HOST_STATES.get(str(extra.get("state")), "unknown"),
                cores=int(cpu.get("cores") or 0), os_type="esxi", extra=record_extra)
        for vm in vms:  # a host the listing did not name still heads its VMs
            if vm.parent and vm.parent not in hosts:
                hosts[vm.parent] = MachineRecord(external_id=vm.parent, name=vm.location,
                                                 hostname=vm.location, os_type="esxi",
                                                 extra={"kind": "hypervisor"})
        return [*hosts.values(), *vms]

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        if external_id.startswith("host:"):
            raise Unsupported("actions on an ESXi host itself are not supported: act on its "
                              "VMs", provider=self.provider, action="host")
        super().machine_action(action, external_id, params)

    def close(self) -> None:
        driver = self._driver
        self._driver = None
        si = getattr(driver, "connection", None)
        if si is not None:
            try:
                from pyVim import connect

                connect.Disconnect(si)
            except Exception:  # best effort: the session times out on the server anyway
                pass
