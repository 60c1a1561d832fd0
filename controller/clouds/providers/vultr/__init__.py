"""Vultr: API v2 through libcloud's ``vultr`` driver (``api_version="2"``).

Mist v2 ``VultrCredentials``: ``apikey``. Machines are cloud instances and bare-metal servers
(the driver lists both; bare metal has no resize)."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="vultr",
    title="Vultr",
    fields=(
        Field("apikey", required=True, secret=True,
              help="A Vultr API v2 key (Account > API); allow the controller's address"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.START, Capability.STOP, Capability.REBOOT,
        Capability.DESTROY, Capability.RESIZE, Capability.SIZES, Capability.IMAGES,
        Capability.LOCATIONS,
    }),
    adapter="controller.clouds.providers.vultr.adapter:VultrAdapter",
    proved="unit",
    stopped_is_free=False,  # Vultr bills a halted instance until it is destroyed
)
