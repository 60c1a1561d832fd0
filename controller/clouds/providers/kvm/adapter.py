"""The KVM adapter: guests of one or more libvirt hypervisors, each hypervisor a machine too.

libcloud's ``LibvirtNodeDriver`` opens each connection (``driver.connection`` is the
``libvirt.virConnect``); everything after that reads libvirt directly, because libcloud's
driver: names a guest by ``virDomainGetID`` (-1 for every shut-off guest, and a new number at
each start), folds paused and shut off into TERMINATED, finds IPs by running ``arp``/``ip
neigh`` once per guest and only on the local host, has no create, and its ``destroy_node``
only powers off. Here a guest's id is its UUID, its state comes from ``virDomainGetState``,
its IPs from ``virDomainInterfaceAddresses`` (DHCP leases, then the host's ARP table), and
``destroy`` powers off *and* undefines (managed-save image, snapshot and checkpoint metadata
and NVRAM go with it; disk volumes are left alone).

Sizes are synthesized (:data:`domains.SHAPES`, those that fit the largest host), locations are
the hypervisor hosts, images are not offered: a new guest is diskless (see ``domains``).

Blocking (libvirt and SSH I/O): the runner calls it from its executor. Connections are opened
lazily, one per hypervisor, kept until :meth:`close`. A ``test:///<file>.xml`` connection holds
its own copy of that fleet: changes last as long as this adapter does."""

from __future__ import annotations

import logging
import uuid as uuidlib
from typing import Any

from controller.clouds.providers.base import (
    JSON,
    Adapter,
    Capability,
    CreateMachine,
    LocationRecord,
    MachineRecord,
    SizeRecord,
    Unsupported,
)
from controller.clouds.providers.docker.secretfiles import SecretFiles
from controller.clouds.providers.kvm import domains, targets
from controller.clouds.providers.kvm.errors import libvirt_errors, quiet_libvirt
from controller.clouds.providers.kvm.targets import Target
from controller.errors import (
    Conflict,
    CredentialsRefused,
    Invalid,
    NotFound,
    ProviderAuthError,
    ProviderUnavailable,
)

log = logging.getLogger(__name__)

_UNDEFINE_ALL = 1 | 2 | 4 | 16  # MANAGED_SAVE | SNAPSHOTS_METADATA | NVRAM | CHECKPOINTS_METADATA


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise Unsupported("the KVM driver needs libvirt-python: pip install 'overcast[kvm]' "
                          "(it builds against libvirt-dev)", provider="kvm") from None
    quiet_libvirt(libvirt)
    return libvirt


class KvmAdapter(Adapter):
    provider = "kvm"
    capabilities = frozenset({Capability.MACHINES, Capability.CREATE, Capability.START,
                              Capability.STOP, Capability.REBOOT, Capability.DESTROY,
                              Capability.SUSPEND, Capability.RESUME, Capability.SIZES,
                              Capability.LOCATIONS})

    def __init__(self, config: dict[str, JSON], secrets: dict[str, str], timeout: float = 30.0) -> None:
        super().__init__(config, secrets, timeout)
        self.targets = targets.targets(config, secrets)
        self._drivers: dict[str, Any] = {}     # target id -> libcloud LibvirtNodeDriver
        self._host_keys: dict[str, tuple[str, str]] = {}  # target id -> (type, base64)
        self._files = SecretFiles()

    def refused_credential(self) -> str:
        if len(self.targets) == 1:
            return _credential(self.targets[0])
        return "hosts"

    # -- connections ------------------------------------------------------------------------
    def conn(self, t: Target) -> Any:
        """The ``libvirt.virConnect`` of one hypervisor, opened on first use."""
        driver = self._drivers.get(t.id)
        if driver is None:
            driver = self._open(t)
            self._drivers[t.id] = driver
        return driver.connection

    def _open(self, t: Target) -> Any:
        _libvirt()
        from libcloud.compute.drivers.libvirt_driver import LibvirtNodeDriver

        if t.is_test:
            try:
                return LibvirtNodeDriver(t.uri)
            except Exception:  # libvirt quotes the file it failed to parse: do not echo it
                raise Invalid(f"libvirt's test driver cannot load {t.uri}", field="uri",
                              provider="kvm") from None
        if t.entry is None:
            with libvirt_errors("connecting", t.name, _credential(t)):
                return LibvirtNodeDriver(t.uri)
        e = t.entry
        pinned = targets.pinned_line(e)
        keyfile = self._files.write(f"key-{e.index}", e.key)
        known = self._files.write(f"known_hosts-{e.index}", pinned)
        uri = targets.ssh_uri(t, keyfile, known, "normal" if pinned else "auto")
        try:
            with libvirt_errors("connecting", t.name, _credential(t)):
                driver = LibvirtNodeDriver(uri)
        finally:
            self._files.remove(keyfile)  # libssh has read it: keep no copy on disk
        with open(known, encoding="utf-8") as f:
            key = targets.learned_key(f.read(), e)
        if e.host_key and not pinned and (not key[1] or not targets.pin_matches(e.host_key, key[1])):
            self._close_driver(driver)
            raise CredentialsRefused(f"the host key of {e.label} does not match the pinned "
                                     f"host_key (hosts[{e.index}].host_key)",
                                     f"hosts[{e.index}].host_key", provider="kvm")
        if key[1]:
            self._host_keys[t.id] = key
        return driver

    def _drop(self, t: Target) -> None:
        driver = self._drivers.pop(t.id, None)
        if driver is not None:
            self._close_driver(driver)

    @staticmethod
    def _close_driver(driver: Any) -> None:
        try:
            driver.connection.close()
        except Exception:  # closing is best effort
            pass

    def check(self) -> None:
        for t in self.targets:
            conn = self.conn(t)
            with libvirt_errors("checking the connection", t.name, _credential(t)):
                conn.getHostname()

    # -- inventory -------------------------------------------------------------------------
    def list_machines(self) -> list[MachineRecord]:
        records: list[MachineRecord] = []
        failures: list[ProviderUnavailable | ProviderAuthError] = []
        for t in self.targets:
            try:
                records.extend(self._list_target(t))
            except (ProviderUnavailable, ProviderAuthError) as exc:
                self._drop(t)
                if len(self.targets) == 1:
                    raise
                failures.append(exc)
                records.append(MachineRecord(external_id=t.id, name=t.name, state="unreachable",
                                             extra={"kind": "hypervisor", "error": exc.message}))
        if failures and len(failures) == len(self.targets):
            raise failures[0]
        return records

    def _list_target(self, t: Target) -> list[MachineRecord]:
        libvirt = _libvirt()
        conn = self.conn(t)
        with libvirt_errors("listing machines", t.name, _credential(t)):
            guests: list[MachineRecord] = []
            for dom in conn.listAllDomains(0):
                try:
                    guests.append(domains.to_machine(dom, t.id, self._addresses(dom)))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    # undefined between the listing and the read: it is gone
            return [self._host_record(t, conn, len(guests)), *guests]

    def _host_record(self, t: Target, conn: Any, guests: int) -> MachineRecord:
        arch, memory_mb, cpus, mhz = conn.getInfo()[:4]
        hostname = str(conn.getHostname())
        extra: dict[str, JSON] = {
            "kind": "hypervisor", "hypervisor": str(conn.getType()), "arch": str(arch),
            "memory_mb": int(memory_mb), "cpu_mhz": int(mhz), "guests": guests,
            "libvirt_version": _version(int(conn.getLibVersion())), "uri": t.uri}
        key = self._host_keys.get(t.id)
        if key:
            extra["host_key"] = f"{key[0]} {key[1]}"
            extra["host_key_fingerprint"] = targets.fingerprint(key[1])
        return MachineRecord(external_id=t.id, name=t.name if t.entry else hostname,
                             state="running", hostname=hostname, cores=int(cpus),
                             os_type="linux", extra=extra)

    @staticmethod
    def _addresses(dom: Any) -> list[str]:
        """IPs of a running guest: DHCP leases of libvirt networks, else the host's ARP table
        (the guest agent is not asked: it may be absent and each miss costs a timeout)."""
        if not dom.isActive():
            return []
        for source in (0, 2):  # VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, _SRC_ARP
            try:
                ifaces = dom.interfaceAddresses(source, 0) or {}
            except Exception:  # unsupported by this hypervisor or source: try the next
                continue
            found = [a["addr"] for i in ifaces.values() for a in (i.get("addrs") or [])
                     if a.get("addr")]
            if found:
                return found
        return []

    def list_sizes(self) -> list[SizeRecord]:
        cpus, ram = 0, 0
        for t in self.targets:
            conn = self.conn(t)
            with libvirt_errors("listing sizes", t.name, _credential(t)):
                info = conn.getInfo()
            cpus, ram = max(cpus, int(info[2])), max(ram, int(info[1]))
        return domains.sizes_for(cpus, ram)

    def list_locations(self) -> list[LocationRecord]:
        return [LocationRecord(external_id=t.id, name=t.name,
                               extra={"kind": "hypervisor", "uri": t.uri}) for t in self.targets]

    # -- actions ---------------------------------------------------------------------------
    def find(self, external_id: str) -> tuple[Target, Any]:
        """(hypervisor, ``virDomain``) of a guest id; :class:`NotFound` when no host has it."""
        if any(external_id == t.id for t in self.targets):
            raise Unsupported("actions on the hypervisor host itself are not supported: act "
                              "on its guests", provider="kvm", action="host")
        try:
            uuidlib.UUID(external_id)
        except ValueError:
            raise NotFound(f"kvm has no machine {external_id!r}",
                           {"external_id": external_id}) from None
        libvirt = _libvirt()
        for t in self.targets:
            conn = self.conn(t)
            with libvirt_errors("finding the machine", t.name, _credential(t)):
                try:
                    return t, conn.lookupByUUIDString(external_id)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
        raise NotFound(f"kvm has no machine {external_id!r}", {"external_id": external_id})

    def machine_action(self, action: Capability, external_id: str, params: dict[str, JSON]) -> None:
        """Idempotent where the guest is already there: start of a running guest and stop of a
        stopped one do nothing. ``stop`` asks the guest to shut down (ACPI); with
        ``params["force"]`` (or when the guest is paused, which cannot act on ACPI) it powers
        off at once. ``start`` of a paused guest resumes it."""
        if action not in self.capabilities or action in (Capability.RESIZE, Capability.RENAME):
            raise self._unsupported(str(action))
        t, dom = self.find(external_id)
        with libvirt_errors(f"running {action}", t.name, _credential(t)):
            state = int(dom.state()[0])
            if action == Capability.START:
                if state == domains.PAUSED:
                    dom.resume()
                elif state == domains.PMSUSPENDED:
                    dom.pMWakeup(0)
                elif not dom.isActive():
                    dom.create()
            elif action == Capability.STOP:
                if dom.isActive():
                    if params.get("force") or state == domains.PAUSED:
                        dom.destroy()
                    else:
                        dom.shutdown()
            elif action == Capability.REBOOT:
                self._require(state in domains.RUNNING, external_id, "running")
                dom.reboot(0)
            elif action == Capability.SUSPEND:
                if state != domains.PAUSED:
                    self._require(state in domains.RUNNING, external_id, "running")
                    dom.suspend()
            elif action == Capability.RESUME:
                if state == domains.PMSUSPENDED:
                    dom.pMWakeup(0)
                elif state not in domains.RUNNING:
                    self._require(state == domains.PAUSED, external_id, "paused or suspended")
                    dom.resume()
            elif action == Capability.DESTROY:
                self._destroy(dom)

    @staticmethod
    def _require(ok: bool, external_id: str, state: str) -> None:
        # checked here: drivers disagree on the error (qemu: invalid operation, test: internal)
        if not ok:
            raise Invalid(f"the guest {external_id} is not {state}", field="state",
                          provider="kvm")

    @staticmethod
    def _destroy(dom: Any) -> None:
        """Power off, then undefine (libcloud's destroy stops at the power-off)."""
        libvirt = _libvirt()
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            try:
                dom.undefineFlags(_UNDEFINE_ALL)
            except libvirt.libvirtError as exc:  # an older or simpler hypervisor: plain undefine
                if exc.get_error_code() not in (3, 8, 84):
                    raise
                dom.undefine()

    def create_machine(self, req: CreateMachine) -> MachineRecord:
        """Define (and, unless ``extra["start"]`` is false, start) a diskless guest: size from
        ``req.size`` or ``extra`` ``{"cpus", "ram_mb"}``, host from ``req.location`` (needed
        when the cloud has several hypervisors). Images are not offered."""
        if req.image:
            raise self._unsupported("images (a new KVM guest is diskless)")
        s = domains.shape(req.size, req.extra)
        t = self._target_for(req.location)
        conn = self.conn(t)
        libvirt = _libvirt()
        with libvirt_errors("creating the machine", t.name, _credential(t)):
            arch, memory_mb, cpus = conn.getInfo()[:3]
            if s.cpus > int(cpus) or s.ram_mb > int(memory_mb):
                raise Invalid(f"{s.id} does not fit {t.name} ({cpus} CPUs, {memory_mb} MiB)",
                              field="size")
            try:
                conn.lookupByName(domains.check_name(req.name))
                raise Conflict(f"{t.name} already has a guest named {req.name!r}",
                               {"provider": "kvm"})
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
            xml = domains.domain_xml(req.name, str(uuidlib.uuid4()), s, self._domain_type(conn),
                                     str(arch), req.tags)
            dom = conn.defineXML(xml)
            if req.extra.get("start", True):
                try:
                    dom.create()
                except libvirt.libvirtError:
                    dom.undefine()  # leave nothing half-made behind
                    raise
            return domains.to_machine(dom, t.id, [])

    def _target_for(self, location: str) -> Target:
        if not location:
            if len(self.targets) > 1:
                raise Invalid("this KVM cloud has several hosts: location names the one to "
                              "create on", field="location")
            return self.targets[0]
        for t in self.targets:
            if location == t.id:
                return t
        raise Invalid(f"kvm has no location {location!r}", field="location")

    @staticmethod
    def _domain_type(conn: Any) -> str:
        """``test`` on the test driver, ``kvm`` where the host has it, else ``qemu`` (TCG)."""
        if str(conn.getType()).upper() == "TEST":
            return "test"
        return "kvm" if "<domain type='kvm'" in str(conn.getCapabilities()) else "qemu"

    def close(self) -> None:
        for t in list(self.targets):
            self._drop(t)
        self._files.close()


def _version(v: int) -> str:
    return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"


def _credential(t: Target) -> str:
    """The field a refusal by this hypervisor is about: its SSH key, or the local URI."""
    return f"hosts[{t.entry.index}].key" if t.entry is not None else "uri"
