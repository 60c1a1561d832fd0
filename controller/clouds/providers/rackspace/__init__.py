"""Rackspace Cloud Servers (next generation, OpenStack) through libcloud's ``rackspace``
driver, one region per cloud, signed in with the account's API key.

Mist v2 ``RackspaceCredentials``: ``username``, ``apikey`` and ``region`` (one of
``REGIONS``). Rackspace offers no stop or start for cloud servers: only reboot (soft;
``params.hard`` for a hard one) and delete."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

# libcloud.compute.drivers.rackspace.ENDPOINT_ARGS_MAP (a test keeps the two equal)
REGIONS = ("dfw", "ord", "iad", "lon", "syd", "hkg")

SPEC = ProviderSpec(
    name="rackspace",
    title="Rackspace Cloud",
    fields=(
        Field("username", required=True, help="The Rackspace Cloud user name"),
        Field("apikey", required=True, secret=True, help="That user's API key"),
        Field("region", required=True, choices=REGIONS,
              help="dfw, ord, iad (US), lon (UK), syd, hkg"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.REBOOT, Capability.DESTROY, Capability.SIZES,
        Capability.IMAGES, Capability.LOCATIONS,
    }),
    adapter="controller.clouds.providers.rackspace.adapter:RackspaceAdapter",
    proved="unit",
    stopped_is_free=False,  # servers are billed until deleted
)
