"""CloudSigma: API 2.0 through libcloud's ``cloudsigma`` driver, one region per cloud.

Mist v2 ``CloudSigmaCredentials``: ``username`` (the account's email), ``password`` and
``region`` (a CloudSigma location code; libcloud 3.9 knows the ones in ``REGIONS``). Sizes
are free-form at CloudSigma: the listed ones are libcloud's examples, without prices."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

# libcloud.common.cloudsigma.API_ENDPOINTS_2_0 (a test keeps the two equal)
REGIONS = ("zrh", "sjc", "wdc", "hnl", "per", "mnl", "fra", "mel", "dbl", "tyo", "crk", "mnl2",
           "ruh", "bdn", "gva")

SPEC = ProviderSpec(
    name="cloudsigma",
    title="CloudSigma",
    fields=(
        Field("username", required=True, help="The account's email address"),
        Field("password", required=True, secret=True, help="The account's password"),
        Field("region", required=True, choices=REGIONS,
              help="The CloudSigma location, e.g. zrh (Zurich), fra, sjc, wdc"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.START, Capability.STOP, Capability.REBOOT,
        Capability.DESTROY, Capability.SIZES, Capability.IMAGES, Capability.LOCATIONS,
    }),
    adapter="controller.clouds.providers.cloudsigma.adapter:CloudSigmaAdapter",
    proved="unit",
    stopped_is_free=True,  # CPU and RAM are billed while running; drives always
)
