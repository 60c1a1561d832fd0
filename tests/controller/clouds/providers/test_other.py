"""The "other server" provider against real sshd in network namespaces: facts of a running
host, the reasons a host is unreachable, a refused key, a malformed key, host-key pinning,
and reboot (with a harmless command: the namespace shares this machine's processes)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from controller.clouds.providers import registry
from controller.clouds.providers.base import Capability
from controller.clouds.providers.other import SPEC, facts, split_credentials
from controller.clouds.providers.other.adapter import OtherAdapter, reboot_command
from controller.errors import (
    CredentialsRefused,
    Invalid,
    NotFound,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
)
from tests.support import sshd as sshd_support
from tests.support.netns import Host, Lab

why = sshd_support.available()
needs_sshd = pytest.mark.skipif(why is not None, reason=why or "")


def private(key: asyncssh.SSHKey) -> str:
    return str(key.export_private_key().decode())


@dataclass
class World:
    web: sshd_support.Sshd         # sshd running, hostname "ocweb", key authorized
    down: Host                     # a namespace with no sshd: connection refused
    key: asyncssh.SSHKey
    stranger: asyncssh.SSHKey      # a key no host accepts
    tmp: Path

    def adapter(self, *hosts: dict[str, Any], timeout: float = 5.0) -> OtherAdapter:
        config, secrets = split_credentials({"hosts": list(hosts)})
        adapter = registry.build("other", config, secrets, timeout)
        assert isinstance(adapter, OtherAdapter)
        return adapter

    def web_entry(self, **more: Any) -> dict[str, Any]:
        return {"host": self.web.host.address, "alias": "web", "key": private(self.key), **more}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if why is not None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("other")
    key = asyncssh.generate_private_key("ssh-ed25519")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with Lab(subnet=random.randint(150, 199)) as lab:  # agents e2e use 200-249
        web_host, down = lab.add_host(), lab.add_host()
        web = sshd_support.Sshd(web_host, tmp / "web", hostname="ocweb")
        web.authorize(key.export_public_key().decode())
        with web:
            yield World(web, down, key, stranger, tmp)


def test_spec_declares_machines_and_reboot() -> None:
    assert registry.spec("other") is SPEC
    assert SPEC.capabilities == {Capability.MACHINES, Capability.REBOOT}
    assert [(f.name, f.kind, f.secret) for f in SPEC.fields] == [("hosts", "list", False)]


def test_keys_become_secrets_and_the_rest_config() -> None:
    config, secrets = split_credentials({"hosts": [
        {"host": "10.0.0.5", "key": "KEY-A", "port": "2222"},
        {"host": "Box.Example", "alias": "box", "user": "ops", "key": "KEY-B",
         "host_key": "SHA256:abc"}]})
    assert config == {"hosts": [
        {"host": "10.0.0.5", "alias": "", "user": "root", "port": 2222, "host_key": ""},
        {"host": "box.example", "alias": "box", "user": "ops", "port": 22,
         "host_key": "SHA256:abc"}]}
    assert secrets == {"hosts.0.key": "KEY-A\n", "hosts.1.key": "KEY-B\n"}


@pytest.mark.parametrize(("hosts", "says"), [
    ([], "non-empty list"),
    ([{"key": "k"}], "host is required"),
    ([{"host": "h"}], "key (a private key) is required"),
    ([{"host": "h", "key": "k", "port": "x"}], "port must be a number"),
    ([{"host": "h", "key": "k", "port": 70000}], "between 1 and 65535"),
    ([{"host": "h", "key": "k", "password": "p"}], "unknown field(s) password"),
    ([{"host": "h", "key": "k"}, {"host": "H", "key": "k2"}], "repeats hosts[0]"),
])
def test_malformed_hosts_are_invalid(hosts: list[dict[str, Any]], says: str) -> None:
    with pytest.raises(Invalid) as err:
        split_credentials({"hosts": hosts})
    assert says in err.value.message


def test_a_key_left_in_config_is_refused() -> None:
    adapter = OtherAdapter({"hosts": [{"host": "h", "key": "SECRET-TEXT"}]}, {})
    with pytest.raises(Invalid) as err:
        adapter.check()
    assert "must be stored as a secret" in err.value.message
    assert "SECRET-TEXT" not in err.value.message


def test_reboot_goes_through_sudo_for_other_users() -> None:
    assert reboot_command("root") == "reboot"
    assert reboot_command("deploy") == "sudo -n reboot"


def test_facts_parse_a_canned_output() -> None:
    out = "\n".join([
        "@hostname", "box1", "@uname", "Linux 6.1.0-18-amd64 x86_64", "@os",
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"', "ID=debian", 'VERSION_ID="12"',
        "@cores", "8", "@memory", "MemTotal:       16314672 kB", "@uptime", "3605.21",
        "@links", "lo 00:00:00:00:00:00", "eth0 52:54:00:AB:CD:EF", "@iplinks", "@addrs",
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever",
        "2: eth0    inet 10.1.2.3/24 brd 10.1.2.255 scope global eth0\\       valid_lft forever",
        "2: eth0    inet 8.8.4.4/32 scope global eth0",
        "2: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever",
        "2: eth0    inet6 2001:4860::5/64 scope global \\       valid_lft forever", "@end"])
    f = facts.parse(out)
    assert (f.hostname, f.os_type, f.kernel, f.arch) == ("box1", "linux", "6.1.0-18-amd64",
                                                        "x86_64")
    assert (f.os, f.os_id, f.os_version) == ("Debian GNU/Linux 12 (bookworm)", "debian", "12")
    assert (f.cores, f.memory_mb, f.uptime_s) == (8, 15932, 3605)
    assert f.macs == ["52:54:00:ab:cd:ef"]
    assert f.private_ips == ["10.1.2.3"]
    assert f.public_ips == ["8.8.4.4", "2001:4860::5"]


# ---- against real sshd --------------------------------------------------------------------
@pytest.mark.root
@needs_sshd
def test_lists_a_running_host_with_its_facts_and_a_down_one(world: World) -> None:
    adapter = world.adapter(world.web_entry(),
                            {"host": world.down.address, "key": private(world.key)})
    web, down = adapter.list_machines()
    assert (web.external_id, web.name, web.state) == (f"{world.web.host.address}:22", "web",
                                                      "running")
    assert web.hostname == "ocweb" and web.os_type == "linux"
    assert web.cores >= 1
    assert world.web.host.address in web.private_ips
    ns_mac = _namespace_mac(world.web.host)
    assert ns_mac in web.macs
    assert web.extra["memory_mb"] > 0 and web.extra["kernel"] and web.extra["arch"]
    # trusted on first use: what it saw is returned so the controller can pin it
    assert web.extra["host_key_fingerprint"] == world.web.fingerprint
    assert web.extra["host_key"] == world.web.public_host_key
    assert web.extra["host_key_pinned"] is False
    assert "error" not in web.extra
    assert (down.name, down.state, down.extra["error"]) == (world.down.address, "unreachable",
                                                            "connection refused")


def _namespace_mac(host: Host) -> str:
    import subprocess

    out = subprocess.run(host.cmd("cat", "/sys/class/net/" + _ns_link(host) + "/address"),
                         capture_output=True, text=True, check=True).stdout
    return out.strip().lower()


def _ns_link(host: Host) -> str:
    # the namespace end of the veth is named like the root end with "ocp" for "ocv"
    return "ocp" + host.veth[3:]


@pytest.mark.root
@needs_sshd
def test_check_passes_and_names_an_unreachable_host(world: World) -> None:
    threads = threading.active_count()
    for _ in range(3):  # each call's loop (and its resolver threads) ends with the call
        world.adapter(world.web_entry()).check()
    assert threading.active_count() == threads
    adapter = world.adapter(world.web_entry(),
                            {"host": world.down.address, "alias": "db", "key": private(world.key)})
    with pytest.raises(ProviderUnavailable) as err:
        adapter.check()
    assert err.value.message == f"cannot reach db ({world.down.address}:22): connection refused"


@pytest.mark.root
@needs_sshd
def test_a_silent_address_times_out_within_the_timeout(world: World) -> None:
    import time

    silent = world.down.address.rsplit(".", 1)[0] + ".250"  # on the bridge, nobody there
    adapter = world.adapter({"host": silent, "key": private(world.key)}, timeout=0.5)
    started = time.monotonic()
    (m,) = adapter.list_machines()
    assert (m.state, m.extra["error"]) == ("unreachable", "timed out")
    assert time.monotonic() - started < 2


@pytest.mark.root
@needs_sshd
def test_a_refused_key_is_an_auth_error_naming_the_host(world: World) -> None:
    entry = {"host": world.web.host.address, "alias": "web", "key": private(world.stranger)}
    adapter = world.adapter(entry)
    with pytest.raises(CredentialsRefused) as err:
        adapter.check()
    assert err.value.message == f"web ({world.web.host.address}:22) refused the key for user root"
    assert err.value.details["field"] == "credentials.hosts[0].key" and err.value.status == 422
    (m,) = adapter.list_machines()
    assert (m.state, m.extra["error"]) == ("unreachable", "key refused")


@pytest.mark.root
@needs_sshd
def test_a_malformed_key_is_invalid_and_never_echoed(world: World) -> None:
    text = private(world.key)
    broken = text.replace(text.splitlines()[2], "B" * 40 + "SECRETMATERIAL")
    adapter = world.adapter(world.web_entry(key=broken))
    with pytest.raises(Invalid) as err:
        adapter.check()
    assert "the key is not a valid private key" in err.value.message
    assert "SECRETMATERIAL" not in str(err.value.to_dict())
    (m,) = adapter.list_machines()  # listing survives it: one bad host is not an exception
    assert m.state == "unreachable" and "not a valid private key" in m.extra["error"]
    assert "SECRETMATERIAL" not in repr(m)

    locked = world.key.export_private_key("pkcs8-pem", passphrase="pw").decode()
    with pytest.raises(Invalid, match="encrypted with a passphrase, which is not supported"):
        world.adapter(world.web_entry(key=locked)).check()


@pytest.mark.root
@needs_sshd
def test_a_pinned_host_key_is_checked(world: World) -> None:
    line = f"{world.web.host.address} {world.web.public_host_key}"
    for pin in (world.web.fingerprint, line, world.web.public_host_key):
        (m,) = world.adapter(world.web_entry(host_key=pin)).list_machines()
        assert m.state == "running", pin
        assert m.extra["host_key_pinned"] is True

    other = asyncssh.generate_private_key("ssh-ed25519")
    logins = world.web.log.count("Accepted key")
    for pin in (other.get_fingerprint("sha256"), other.export_public_key().decode()):
        adapter = world.adapter(world.web_entry(host_key=pin))
        (m,) = adapter.list_machines()
        assert (m.state, m.extra["error"]) == ("unreachable", "host key mismatch")
        assert m.extra["host_key"] == ""  # an untrusted key is not offered for pinning
        with pytest.raises(ProviderError) as err:
            adapter.check()
        assert not isinstance(err.value, ProviderAuthError | ProviderUnavailable)
        assert "does not match the pinned one" in err.value.message
        assert world.web.fingerprint in err.value.message
    assert world.web.log.count("Accepted key") == logins  # refused before offering the key

    with pytest.raises(Invalid, match="host_key is neither"):
        world.adapter(world.web_entry(host_key="not a key")).check()


@pytest.mark.root
@needs_sshd
def test_reboot_runs_the_command_and_reports_failure(world: World) -> None:
    flag = world.tmp / "rebooted"
    adapter = world.adapter(world.web_entry())
    # never the real command: this sshd shares the machine's processes
    adapter.reboot_command = f"echo yes > {flag}"
    adapter.machine_action(Capability.REBOOT, f"{world.web.host.address}:22", {})
    assert flag.read_text() == "yes\n"

    adapter.reboot_command = "echo 'reboot: not allowed' >&2; exit 1"
    with pytest.raises(ProviderError, match="reboot on web .* failed: reboot: not allowed"):
        adapter.machine_action(Capability.REBOOT, f"{world.web.host.address}:22", {})
    # the host going down mid-command (its session killed) is what a reboot looks like
    adapter.reboot_command = "kill -9 $PPID"
    adapter.machine_action(Capability.REBOOT, f"{world.web.host.address}:22", {})
    with pytest.raises(NotFound):
        adapter.machine_action(Capability.REBOOT, "10.9.9.9:22", {})
    with pytest.raises(Invalid, match="does not support stop"):
        adapter.machine_action(Capability.STOP, f"{world.web.host.address}:22", {})
