"""Equinix Metal: bare metal through libcloud's ``equinixmetal`` driver (API ``/metal/v1``).

Mist v2 ``EquinixCredentials``: ``apikey`` (a user or project API token). ``project_id`` is
an Overcast addition, optional: without it every project the token sees is listed.
Equinix has announced the end of Metal (June 2026); the API works until then."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="equinix",
    title="Equinix Metal",
    fields=(
        Field("apikey", required=True, secret=True, help="An Equinix Metal API token"),
        Field("project_id", help="Only this project (its UUID); empty for every project "
                                 "the token can see"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.START, Capability.STOP, Capability.REBOOT,
        Capability.DESTROY, Capability.SIZES, Capability.IMAGES, Capability.LOCATIONS,
    }),
    adapter="controller.clouds.providers.equinix.adapter:EquinixAdapter",
    proved="unit",
    stopped_is_free=False,  # a powered-off server is billed until it is deleted
)
