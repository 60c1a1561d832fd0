"""KVM: guests of libvirt hypervisors (libcloud's libvirt driver opens the connections).

Mist v2 ``KvmCredentials``: ``hosts``, a list of ``{host, alias, key, user, port}``, reached
over SSH (``qemu+libssh://user@host:port/system``; each item may also carry ``host_key`` to
pin the host's key, and each private key is stored as a secret, as for the "other server"
provider: see :func:`split_credentials`). Our extension: ``uri``, a local libvirt URI instead
of hosts (``test:///default``, ``test:///abs/path/fleet.xml``, ``qemu:///system``).

Machines: every hypervisor (id ``host:<host>``) and its guests (id = the domain UUID,
``parent`` = the hypervisor). Sizes are synthesized, locations are the hypervisors, images are
not offered (new guests are diskless). Proved against libvirt's test driver with one fleet file
per test; the SSH transport is not proved here (it needs libvirtd on a remote host)."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec
from controller.clouds.providers.kvm.targets import split_credentials

__all__ = ["SPEC", "split_credentials"]

SPEC = ProviderSpec(
    name="kvm",
    title="KVM (libvirt)",
    fields=(
        Field("hosts", kind="list", secret=False,
              help="Hypervisors reached over SSH: each {host, key, alias?, user? (root), "
                   "port? (22), host_key? (known_hosts line or SHA256: fingerprint to pin)}; "
                   "each key is a private key (OpenSSH or PEM) and is stored as a secret"),
        Field("uri", help="Instead of hosts, a local libvirt URI: test:///default, "
                          "test:///<absolute path>.xml, qemu:///system or qemu:///session"),
    ),
    capabilities=frozenset({Capability.MACHINES, Capability.CREATE, Capability.START,
                            Capability.STOP, Capability.REBOOT, Capability.DESTROY,
                            Capability.SUSPEND, Capability.RESUME, Capability.SIZES,
                            Capability.LOCATIONS}),
    adapter="controller.clouds.providers.kvm.adapter:KvmAdapter",
    proved="e2e:libvirt test driver (per-test fleet files)",
    stopped_is_free=False,  # one's own hypervisor costs the same whatever its guests do
)
