"""Linode (Akamai): API v4 through libcloud's ``linode`` driver (``api_version="4.0"``).

Mist v2 ``LinodeCredentials``: ``apikey`` (a personal access token). Machines are Linode
instances; tags are Linode's plain string tags (``key=value`` read as a pair)."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="linode",
    title="Linode",
    fields=(
        Field("apikey", required=True, secret=True,
              help="A Linode API v4 personal access token (Linodes: read/write)"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.CREATE, Capability.START, Capability.STOP,
        Capability.REBOOT, Capability.DESTROY, Capability.RESIZE, Capability.RENAME,
        Capability.SIZES, Capability.IMAGES, Capability.LOCATIONS,
    }),
    adapter="controller.clouds.providers.linode.adapter:LinodeAdapter",
    proved="unit",
    stopped_is_free=False,  # Linode bills an offline Linode like a running one
)
