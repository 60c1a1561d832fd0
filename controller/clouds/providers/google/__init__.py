"""Google Compute Engine through libcloud's ``gce`` driver, signed in as a service account.

Mist v2 ``GoogleCredentials``: ``projectId``, ``email`` (the service account's
``client_email``) and ``privateKey`` (its PEM private key, or the whole JSON key file).
Labels are the machine's tags; GCE's network tags are ``extra.network_tags``."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="google",
    title="Google Cloud",
    fields=(
        Field("projectId", required=True, help="The project id (not its name or number)"),
        Field("email", required=True,
              help="The service account's email (…@<project>.iam.gserviceaccount.com)"),
        Field("privateKey", required=True, secret=True, kind="text",
              help="The service account's private key: the PEM block, or the whole JSON key file"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.START, Capability.STOP, Capability.REBOOT,
        Capability.DESTROY, Capability.SIZES, Capability.IMAGES, Capability.LOCATIONS,
    }),
    adapter="controller.clouds.providers.google.adapter:GoogleAdapter",
    proved="unit",
    stopped_is_free=True,  # a TERMINATED (stopped) instance bills its disks only
)
