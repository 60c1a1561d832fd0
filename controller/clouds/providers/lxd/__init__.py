"""LXD: the instances of an LXD server through libcloud's LXD driver, each a machine whose
``parent`` is the server (itself a machine, ``host:<host>``).

Mist v2 ``LxdCredentials``: ``host``, ``port`` (8443), ``username``/``password``,
``tlsKey``/``tlsCert`` (the client certificate the server trusts), ``tlsCaCert`` (pins the
server's certificate; without it the server's certificate is not verified) and ``showAll``.
Proved by unit tests against a small local server answering LXD's REST API shapes."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="lxd",
    title="LXD",
    fields=(
        Field("host", required=True, help="The LXD server (name or address)"),
        Field("port", kind="integer", default=8443, help="The LXD API port"),
        Field("username", help="Basic-auth user, for a server behind an authenticating proxy"),
        Field("password", secret=True, help="Basic-auth password"),
        Field("tlsKey", secret=True, kind="text", help="TLS client private key (PEM)"),
        Field("tlsCert", secret=True, kind="text",
              help="TLS client certificate (PEM), trusted on the server (lxc config trust add)"),
        Field("tlsCaCert", secret=True, kind="text",
              help="The server's certificate or its CA (PEM); without it the server's "
                   "certificate is not verified"),
        Field("showAll", kind="boolean", default=True,
              help="Show all containers, including stopped"),
    ),
    capabilities=frozenset({Capability.MACHINES, Capability.CREATE, Capability.START,
                            Capability.STOP, Capability.REBOOT, Capability.DESTROY,
                            Capability.SUSPEND, Capability.RESUME, Capability.IMAGES}),
    adapter="controller.clouds.providers.lxd.adapter:LxdAdapter",
    proved="unit",
    stopped_is_free=False,  # instances share the server: stopping one saves nothing billed
)
