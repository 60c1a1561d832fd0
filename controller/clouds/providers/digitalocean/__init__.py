"""DigitalOcean: droplets, block storage volumes and DNS over the v2 API, through libcloud.

Mist v2 ``DigitaloceanCredentials``: ``token`` (a personal access token). Our extension:
``endpoint``, the API's base URL (default https://api.digitalocean.com), for an HTTP proxy
or gateway in front of the API, and for tests against a local stand-in; a path prefix
(``https://gw.example/do``) is kept.

Machines are droplets: start is ``power_on``, stop a graceful ``shutdown`` (``params.force``
sends ``power_off``), reboot (``params.hard`` sends ``power_cycle``), destroy, rename, resize
(the droplet must be off; CPU and RAM only, so it can be undone, unless ``params.disk``). Create takes a size slug, an image
id or slug and a region slug; the public key is matched to the account's keys by
fingerprint or imported, ``extra.ssh_keys`` adds keys by id or fingerprint, tags become
DigitalOcean tags (``key:value``). Locations are the regions open for new droplets."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="digitalocean",
    title="DigitalOcean",
    fields=(
        Field("token", required=True, secret=True, help="Your DigitalOcean API token"),
        Field("endpoint", help="API base URL (Overcast extension, for a proxy); default "
                               "https://api.digitalocean.com"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.CREATE, Capability.START, Capability.STOP,
        Capability.REBOOT, Capability.DESTROY, Capability.RESIZE, Capability.RENAME,
        Capability.VOLUMES, Capability.ATTACH, Capability.DNS, Capability.SIZES,
        Capability.IMAGES, Capability.LOCATIONS}),
    adapter="controller.clouds.providers.digitalocean.adapter:DigitalOceanAdapter",
    proved="e2e:local server answering like the DigitalOcean API (tests/support/fake_digitalocean.py)",
    stopped_is_free=False,  # a powered-off droplet is billed until destroyed
)
