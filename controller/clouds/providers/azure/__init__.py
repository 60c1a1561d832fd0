"""Microsoft Azure: virtual machines through libcloud's ``azure_arm`` (Resource Manager) driver.

Mist v2 ``AzureCredentials``: ``tenantId``, ``subscriptionId``, ``key`` (the service
principal's application (client) id, an identifier rather than a secret) and ``secret``
(its client secret). Stop deallocates, so a stopped machine's compute is not billed; a machine
only powered off inside the guest shows as ``paused`` and is still billed.

Sizes and images are not offered: libcloud lists sizes only per location and images only by
walking every publisher, offer and SKU (thousands of calls)."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="azure",
    title="Microsoft Azure",
    fields=(
        Field("tenantId", required=True, help="The directory (tenant) id"),
        Field("subscriptionId", required=True, help="The subscription id"),
        Field("key", required=True,
              help="The application (client) id of a service principal with a role on the "
                   "subscription (Reader to list, Virtual Machine Contributor to act)"),
        Field("secret", required=True, secret=True, help="That application's client secret"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.START, Capability.STOP, Capability.REBOOT,
        Capability.DESTROY, Capability.LOCATIONS,
    }),
    adapter="controller.clouds.providers.azure.adapter:AzureAdapter",
    proved="unit",
    stopped_is_free=True,  # stop deallocates
)
