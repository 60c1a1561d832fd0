"""OnApp: virtual servers of an OnApp control panel through libcloud's ``onapp`` driver.

Mist v2 ``OnappCredentials``: ``username``, ``apikey`` (the user's API key), ``host`` (the
control panel, ``cp.example.com`` or ``https://cp.example.com:8443``), ``verify`` (check its
TLS certificate; default true) and ``authUrl`` (accepted for compatibility, not used: the
panel itself authenticates each request). libcloud only lists and deletes: start, stop
(graceful shutdown) and reboot are the panel's own ``/virtual_machines/<id>/startup.json``,
``shutdown.json`` and ``reboot.json``."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="onapp",
    title="OnApp",
    fields=(
        Field("username", required=True, help="The control panel user"),
        Field("apikey", required=True, secret=True, help="That user's API key"),
        Field("host", required=True,
              help="The control panel: host name or https:// URL (with its port if not 443)"),
        Field("verify", kind="boolean", default=True,
              help="Check the panel's TLS certificate (turn off only for a self-signed one)"),
        Field("authUrl", help="Not used (kept for Mist compatibility)"),
    ),
    capabilities=frozenset({
        Capability.MACHINES, Capability.START, Capability.STOP, Capability.REBOOT,
        Capability.DESTROY, Capability.IMAGES,
    }),
    adapter="controller.clouds.providers.onapp.adapter:OnAppAdapter",
    proved="unit",
    stopped_is_free=False,  # each panel prices a powered-off server its own way
)
