"""vSphere: VMs of a vCenter or a standalone ESXi host (ESXi goes through this provider), over
libcloud's vSphere driver, which needs pyvmomi (not a dependency: the adapter says so).

Mist v2 ``VsphereCredentials``: ``host`` (may carry ``:port``, 443), ``username``,
``password`` and ``ca_cert_file`` (the CA certificate, PEM text). Each ESXi host is a machine
(``host:<name>``) and the ``parent`` of its VMs. Proved by unit tests of field mapping,
translation and the missing-pyvmomi message (no vCenter or ESXi can run here)."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="vsphere",
    title="VMware vSphere / ESXi",
    fields=(
        Field("host", required=True, help="The vCenter or ESXi host (name or address, :port)"),
        Field("username", required=True, help="A vSphere user"),
        Field("password", required=True, secret=True, help="Its password"),
        Field("ca_cert_file", secret=True, kind="text",
              help="The CA certificate (PEM) that signed the server's certificate; without it "
                   "the system's CAs are used"),
    ),
    capabilities=frozenset({Capability.MACHINES, Capability.START, Capability.STOP,
                            Capability.REBOOT, Capability.DESTROY, Capability.IMAGES,
                            Capability.LOCATIONS}),
    adapter="controller.clouds.providers.vsphere.adapter:VsphereAdapter",
    proved="unit",
    stopped_is_free=False,  # one's own hypervisors cost the same whatever the VMs do
)
