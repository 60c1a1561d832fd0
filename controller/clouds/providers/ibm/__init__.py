"""IBM Cloud classic infrastructure (SoftLayer) virtual servers, through a small libcloud
driver of our own over the SoftLayer REST API (``ibm/driver.py``): libcloud 3.9 no longer
ships its SoftLayer driver, and its ``ibm`` provider constant has no driver behind it.

Mist v2 ``IbmCredentials``: ``apikey`` (required) and ``username``. With a classic
infrastructure API key give its user name; with an IBM Cloud (IAM) API key leave ``username``
empty: the API then takes the user name ``apikey``. VPC infrastructure is not covered."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="ibm",
    title="IBM Cloud (classic infrastructure)",
    fields=(
        Field("username", help="The classic infrastructure user name; empty for an IBM Cloud "
                               "API key"),
        Field("apikey", required=True, secret=True,
              help="A classic infrastructure API key, or an IBM Cloud API key"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.START, Capability.STOP, Capability.REBOOT,
        Capability.DESTROY, Capability.LOCATIONS,
    }),
    adapter="controller.clouds.providers.ibm.adapter:IbmAdapter",
    proved="unit",
    stopped_is_free=False,  # a powered-off virtual server is billed until cancelled
)
