"""OpenStack: nova servers, glance images, neutron networks and cinder volumes behind a
keystone v3 password login, through libcloud's OpenStack driver.

Mist v2 ``OpenstackCredentials``: ``authUrl`` (keystone, with or without ``/v3``), ``user``,
``password``, ``tenant`` (the project name; needed here, since an unscoped token lists no
services), ``domain`` (the user's domain name, default "Default"; the project is looked up in
the default domain), ``region`` (which catalog region to use when there are several) and
``computeEndpoint`` (nova's URL, when the catalog's is not reachable from here).

Machines are servers: start/stop (``os-start``/``os-stop``), reboot (soft; ``params.hard``
for hard), destroy, rename, suspend/resume, resize (waits for ``VERIFY_RESIZE``, confirms). Create takes a flavor
id, an image id and optionally an availability zone; the public key is matched by fingerprint
to the user's key pairs or imported, ``extra.networks`` lists network ids (needed when the
project has more than one), ``extra.key_name`` an existing key pair, tags become server
metadata. Locations are nova's availability zones; networks are neutron's, with subnets."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="openstack",
    title="OpenStack",
    fields=(
        Field("authUrl", required=True, help="Identity (keystone) URL, e.g. "
                                             "https://keystone.example.com:5000/v3"),
        Field("user", required=True, help="User name"),
        Field("password", required=True, secret=True, help="Password"),
        Field("tenant", help="Project (tenant) name"),
        Field("domain", help="The user's domain name (default: Default)"),
        Field("region", help="Region, when the cloud has several"),
        Field("computeEndpoint", help="Compute (nova) URL, overriding the catalog's"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.CREATE, Capability.START, Capability.STOP,
        Capability.REBOOT, Capability.DESTROY, Capability.RESIZE, Capability.RENAME,
        Capability.SUSPEND, Capability.RESUME, Capability.VOLUMES, Capability.ATTACH,
        Capability.NETWORKS, Capability.SIZES, Capability.IMAGES, Capability.LOCATIONS}),
    adapter="controller.clouds.providers.openstack.adapter:OpenStackAdapter",
    proved="e2e:local server answering like Keystone, Nova, Glance, Neutron and Cinder (tests/support/fake_openstack.py)",
    stopped_is_free=False,  # a SHUTOFF server keeps its resources (and public clouds bill it)
)
