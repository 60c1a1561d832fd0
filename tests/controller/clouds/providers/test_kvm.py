"""The KVM adapter against libvirt's test driver: a real libvirt connection to a fleet
described in a file of the test's own (``test:///<tmp>/fleet.xml``), so tests are independent."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.clouds.providers import registry
from controller.clouds.providers.base import Capability, CreateMachine, Unsupported
from controller.clouds.providers.kvm import domains, split_credentials, targets
from controller.errors import Conflict, CredentialsRefused, Invalid, NotFound, ProviderUnavailable

pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install '.[kvm]')")

from controller.clouds.providers.kvm.adapter import KvmAdapter  # noqa: E402

WEB = "11111111-2222-3333-4444-555555555551"
DB = "11111111-2222-3333-4444-555555555552"
IDLE = "11111111-2222-3333-4444-555555555553"

FLEET = f"""<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>
       <active>4</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>8388608</memory>
  <network><name>default</name><bridge name="virbr0"/><forward/>
    <ip address="192.168.122.1" netmask="255.255.255.0">
      <dhcp><range start="192.168.122.2" end="192.168.122.254"/></dhcp></ip></network>
  <domain type="test">
    <name>web</name><uuid>{WEB}</uuid><memory>2097152</memory><vcpu>2</vcpu>
    <os><type>hvm</type></os>
    <devices><interface type="network"><mac address="52:54:00:aa:bb:01"/>
      <source network="default"/></interface></devices>
  </domain>
  <domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0">
    <name>db</name><uuid>{DB}</uuid><memory>524288</memory><vcpu>1</vcpu>
    <os><type>hvm</type></os><test:runstate>5</test:runstate>
  </domain>
  <domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0">
    <name>idle</name><uuid>{IDLE}</uuid><memory>524288</memory><vcpu>1</vcpu>
    <os><type>hvm</type></os><test:runstate>3</test:runstate>
  </domain>
</node>
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.xml"
    path.write_text(FLEET)
    return path


@pytest.fixture
def kvm(fleet: Path) -> Iterator[KvmAdapter]:
    adapter = registry.build("kvm", {"uri": f"test://{fleet}"}, {}, 10.0)
    assert isinstance(adapter, KvmAdapter)
    yield adapter
    adapter.close()


def states(adapter: KvmAdapter) -> dict[str, str]:
    return {m.name: m.state for m in adapter.list_machines()}


def by_name(adapter: KvmAdapter, name: str) -> str:
    return next(m.external_id for m in adapter.list_machines() if m.name == name)


# ---- inventory ------------------------------------------------------------------------------
def test_lists_the_host_and_its_guests_as_a_tree(kvm: KvmAdapter) -> None:
    kvm.check()
    machines = {m.external_id: m for m in kvm.list_machines()}
    host = machines.pop("host:localhost")
    assert host.state == "running" and host.cores == 4 and host.parent == ""
    assert host.extra["kind"] == "hypervisor" and host.extra["memory_mb"] == 8192
    assert host.extra["guests"] == 3
    assert set(machines) == {WEB, DB, IDLE}
    assert all(m.parent == "host:localhost" and m.location == "host:localhost"
               for m in machines.values())
    web = machines[WEB]
    assert (web.name, web.state, web.cores) == ("web", "running", 2)
    assert web.size == "2cpu-2gb" and web.extra["memory_mb"] == 2048
    assert web.private_ips == ["192.168.122.3"] and web.macs == ["52:54:00:aa:bb:01"]


def test_stopped_and_paused_are_told_apart(kvm: KvmAdapter) -> None:
    # libcloud's libvirt driver reports both as "terminated"
    assert states(kvm) == {"vm": "running", "web": "running", "db": "stopped",
                           "idle": "paused"} | {m.name: m.state for m in kvm.list_machines()
                                                if m.extra.get("kind") == "hypervisor"}
    ids = {m.name: m.external_id for m in kvm.list_machines()}
    assert {ids["db"], ids["idle"]} == {DB, IDLE}  # stable UUIDs, not libvirt's -1 ids


def test_sizes_are_synthesized_to_fit_the_host_and_locations_are_hosts(kvm: KvmAdapter) -> None:
    sizes = {s.external_id: s for s in kvm.list_sizes()}
    assert "4cpu-8gb" in sizes and "8cpu-16gb" not in sizes  # the host has 4 CPUs, 8 GiB
    assert sizes["2cpu-4gb"].ram_mb == 4096 and sizes["2cpu-4gb"].price_per_hour is None
    assert [loc.external_id for loc in kvm.list_locations()] == ["host:localhost"]
    with pytest.raises(Unsupported):
        kvm.list_images()


# ---- actions --------------------------------------------------------------------------------
def test_stop_start_reboot(kvm: KvmAdapter) -> None:
    kvm.machine_action(Capability.STOP, WEB, {})
    assert states(kvm)["web"] == "stopped"
    kvm.machine_action(Capability.STOP, WEB, {})  # already stopped: nothing to do
    kvm.machine_action(Capability.START, WEB, {})
    assert states(kvm)["web"] == "running"
    kvm.machine_action(Capability.REBOOT, WEB, {})
    assert states(kvm)["web"] == "running"
    kvm.machine_action(Capability.STOP, WEB, {"force": True})
    assert states(kvm)["web"] == "stopped"


def test_suspend_resume_and_start_of_a_paused_guest(kvm: KvmAdapter) -> None:
    kvm.machine_action(Capability.SUSPEND, WEB, {})
    assert states(kvm)["web"] == "paused"
    kvm.machine_action(Capability.RESUME, WEB, {})
    assert states(kvm)["web"] == "running"
    kvm.machine_action(Capability.START, IDLE, {})  # start of a paused guest resumes it
    assert states(kvm)["idle"] == "running"


def test_destroy_removes_the_guest_not_just_powers_it_off(kvm: KvmAdapter) -> None:
    kvm.machine_action(Capability.DESTROY, WEB, {})   # running: destroyed then undefined
    kvm.machine_action(Capability.DESTROY, DB, {})    # shut off: undefined
    assert set(states(kvm)) == {"vm", "idle"}
    with pytest.raises(NotFound):
        kvm.machine_action(Capability.START, WEB, {})


def test_errors_are_the_domains(kvm: KvmAdapter) -> None:
    with pytest.raises(NotFound):
        kvm.machine_action(Capability.START, "11111111-0000-0000-0000-000000000000", {})
    with pytest.raises(NotFound):
        kvm.machine_action(Capability.START, "not-a-uuid", {})
    with pytest.raises(Unsupported):
        kvm.machine_action(Capability.STOP, "host:localhost", {})
    with pytest.raises(Unsupported):
        kvm.machine_action(Capability.RESIZE, WEB, {"size": "1cpu-1gb"})
    with pytest.raises(Invalid):  # libvirt: the guest is not running
        kvm.machine_action(Capability.SUSPEND, DB, {})


def test_a_refusal_names_the_hosts_key_or_the_uri(fleet: Path) -> None:
    import libvirt

    from controller.clouds.providers.kvm.errors import libvirt_errors

    denied = libvirt.libvirtError("authentication failed")
    denied.err = (45, 0, "authentication failed: access denied", 2, "", None, None, 0, 0)
    with pytest.raises(CredentialsRefused) as err:
        with libvirt_errors("connecting", "kvm1 (192.0.2.7:22)", "hosts[1].key"):
            raise denied
    assert err.value.details["field"] == "credentials.hosts[1].key"
    assert err.value.status == 422 and "(hosts[1].key)" in err.value.message
    assert "access denied" in err.value.message
    ssh = KvmAdapter({"hosts": [{"host": "192.0.2.7"}]}, {"hosts.0.key": "KEY"})
    local = KvmAdapter({"uri": f"test://{fleet}"}, {})
    assert (ssh.refused_credential(), local.refused_credential()) == ("hosts[0].key", "uri")


def test_fleets_are_independent_per_file(fleet: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.xml"
    other.write_text(FLEET)
    a = KvmAdapter({"uri": f"test://{fleet}"}, {})
    b = KvmAdapter({"uri": f"test://{other}"}, {})
    try:
        a.machine_action(Capability.DESTROY, WEB, {})
        assert "web" not in states(a) and states(b)["web"] == "running"
    finally:
        a.close()
        b.close()


# ---- create ---------------------------------------------------------------------------------
def test_create_defines_and_starts_a_guest(kvm: KvmAdapter) -> None:
    m = kvm.create_machine(CreateMachine(name="new-1", size="2cpu-2gb", tags={"env": "dev"}))
    assert (m.name, m.state, m.cores, m.size, m.parent) == ("new-1", "running", 2, "2cpu-2gb",
                                                            "host:localhost")
    listed = {x.external_id: x for x in kvm.list_machines()}[m.external_id]
    assert listed.tags == {"env": "dev"} and listed.extra["memory_mb"] == 2048
    kvm.machine_action(Capability.STOP, m.external_id, {})
    kvm.machine_action(Capability.DESTROY, m.external_id, {})
    assert "new-1" not in states(kvm)


def test_create_custom_shape_without_starting(kvm: KvmAdapter) -> None:
    m = kvm.create_machine(CreateMachine(name="small", location="host:localhost",
                                         extra={"cpus": 1, "ram_mb": 256, "start": False}))
    assert m.state == "stopped" and m.cores == 1 and m.extra["max_memory_mb"] == 256


def test_create_refuses_what_would_be_unsafe_or_cannot_fit(kvm: KvmAdapter) -> None:
    with pytest.raises(Conflict):  # defineXML would otherwise redefine the existing guest
        kvm.create_machine(CreateMachine(name="web"))
    with pytest.raises(Invalid):
        kvm.create_machine(CreateMachine(name="big", size="8cpu-16gb"))
    with pytest.raises(Invalid):
        kvm.create_machine(CreateMachine(name="../etc/x"))
    with pytest.raises(Invalid):
        kvm.create_machine(CreateMachine(name="x", size="huge"))
    with pytest.raises(Invalid):
        kvm.create_machine(CreateMachine(name="x", location="host:elsewhere"))
    with pytest.raises(Unsupported):
        kvm.create_machine(CreateMachine(name="x", image="debian"))
    assert set(states(kvm)) == {"vm", "web", "db", "idle"}


def test_domain_xml_escapes_and_holds_only_what_it_should() -> None:
    xml = domains.domain_xml("g1", "11111111-2222-3333-4444-555555555559",
                             domains.Shape("x", 2, 1024), "kvm", "x86_64",
                             {"a<b": "\"quoted\" & <tag>"})
    facts = domains.read_xml(xml)
    assert facts.tags == {"a<b": "\"quoted\" & <tag>"}
    assert "<disk" not in xml and "<interface" not in xml and "<acpi" in xml
    assert "<memory unit=\"MiB\">1024</memory>" in xml and "<vcpu>2</vcpu>" in xml


# ---- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize("uri", [
    "qemu+ext:///system?command=/bin/sh", "qemu+ssh://root@h/system", "test:///default?x=1",
    "qemu:///system?socket=/tmp/s", "test:///tmp/../etc/passwd.xml", "test:///etc/passwd",
    "test://relative.xml", "xen:///system", "", "lxc:///",
])
def test_uri_must_be_local_and_plain(uri: str) -> None:
    with pytest.raises(Invalid):
        targets.check_uri(uri)


def test_unloadable_fleet_file_is_invalid_without_quoting_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<node>secret-looking-content")
    adapter = KvmAdapter({"uri": f"test://{bad}"}, {})
    with pytest.raises(Invalid) as err:
        adapter.list_machines()
    assert "secret-looking-content" not in err.value.message


def test_split_credentials_uri_or_hosts() -> None:
    assert split_credentials({"uri": "test:///default"}) == ({"uri": "test:///default"}, {})
    config, secrets = split_credentials({"hosts": [{"host": "kvm1.example", "key": "KEY",
                                                    "alias": "one", "port": "2222"}]})
    assert "KEY" not in repr(config) and secrets == {"hosts.0.key": "KEY\n"}
    with pytest.raises(Invalid):
        split_credentials({"uri": "test:///default", "hosts": [{"host": "h", "key": "k"}]})
    with pytest.raises(Invalid):
        split_credentials({})


def test_ssh_hosts_become_libssh_uris_with_pinned_keys() -> None:
    config, secrets = split_credentials({"hosts": [
        {"host": "kvm1.example", "key": "KEY", "alias": "one", "user": "ops", "port": "2222",
         "host_key": "kvm1.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"},
        {"host": "kvm2.example", "key": "KEY2"}]})
    t1, t2 = targets.targets(config, secrets)
    assert (t1.id, t1.name, t1.uri) == ("host:kvm1.example", "one",
                                        "qemu+libssh://ops@kvm1.example:2222/system")
    assert t2.uri == "qemu+libssh://root@kvm2.example:22/system"
    assert t1.entry is not None and t1.entry.key == "KEY\n"
    assert targets.pinned_line(t1.entry) == \
        "[kvm1.example]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"
    uri = targets.ssh_uri(t1, "/k/key", "/k/known", "normal")
    assert "keyfile=%2Fk%2Fkey" in uri and "known_hosts_verify=normal" in uri
    assert "KEY" not in uri


def test_fingerprint_pins_match_the_learned_key() -> None:
    blob = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519" + bytes(36)).decode()
    sha = "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()
                                       ).decode().rstrip("=")
    assert targets.fingerprint(blob) == sha and targets.pin_matches(sha, blob)
    assert not targets.pin_matches("SHA256:nope", blob)
    config, secrets = split_credentials({"hosts": [{"host": "h1", "key": "K", "port": "2200"}]})
    entry = targets.targets(config, secrets)[0].entry
    assert entry is not None
    assert targets.learned_key(f"[h1]:2200 ssh-ed25519 {blob}\n", entry) == ("ssh-ed25519", blob)


def test_one_unreachable_host_does_not_hide_the_others(fleet: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config, secrets = split_credentials({"hosts": [{"host": "up.example", "key": "K"},
                                                   {"host": "down.example", "key": "K"}]})
    adapter = KvmAdapter(config, secrets)
    from libcloud.compute.drivers.libvirt_driver import LibvirtNodeDriver

    def fake_open(t: targets.Target) -> LibvirtNodeDriver:
        if t.id == "host:down.example":
            raise ProviderUnavailable("cannot reach kvm while connecting on down.example")
        return LibvirtNodeDriver(f"test://{fleet}")

    monkeypatch.setattr(adapter, "_open", fake_open)
    machines = {m.external_id: m for m in adapter.list_machines()}
    assert machines["host:down.example"].state == "unreachable"
    assert machines["host:up.example"].state == "running"
    assert machines[WEB].parent == "host:up.example"
    with pytest.raises(Invalid):  # two hosts: a create must name one
        adapter.create_machine(CreateMachine(name="x"))
    adapter.close()


def test_spec_imports_no_driver() -> None:
    s = registry.spec("kvm")
    assert s.adapter.endswith(":KvmAdapter") and s.proved.startswith("e2e:")
    assert {f.name for f in s.fields} == {"hosts", "uri"}
