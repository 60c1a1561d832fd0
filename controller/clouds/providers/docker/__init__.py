"""Docker: the containers of a Docker Engine API daemon (Docker or Podman), each container a
machine whose ``parent`` is the daemon's host (itself a machine, ``host:<host>``).

Mist v2 ``DockerCredentials``: ``host``, ``port``, ``username``/``password`` (basic auth, for a
daemon behind a proxy), ``tlsKey``/``tlsCert``/``tlsCaCert`` (PEM text) and ``showAll``. Our
extension: ``socket``, a unix socket path instead of host and port. The adapter speaks the
Engine API itself (see ``engine`` for why not libcloud's driver). Proved against a real Podman
API service (``podman system service`` on a unix socket) with a busybox image made locally."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec

SPEC = ProviderSpec(
    name="docker",
    title="Docker",
    fields=(
        Field("host", help="The Docker host (name or address; tcp://, http:// or https:// "
                           "accepted). Required unless socket is given"),
        Field("port", kind="integer", help="The Docker API port (2375, or 2376 with TLS)"),
        Field("socket", help="Instead of host and port, the daemon's unix socket on the "
                             "controller's host, e.g. /var/run/docker.sock"),
        Field("username", help="Basic-auth user, for a daemon behind an authenticating proxy"),
        Field("password", secret=True, help="Basic-auth password"),
        Field("tlsKey", secret=True, kind="text", help="TLS client private key (PEM)"),
        Field("tlsCert", secret=True, kind="text", help="TLS client certificate (PEM)"),
        Field("tlsCaCert", secret=True, kind="text",
              help="CA certificate (PEM) that signed the daemon's certificate"),
        Field("showAll", kind="boolean", default=True,
              help="Show all containers, including stopped"),
    ),
    capabilities=frozenset({Capability.MACHINES, Capability.CREATE, Capability.START,
                            Capability.STOP, Capability.REBOOT, Capability.DESTROY,
                            Capability.SUSPEND, Capability.RESUME, Capability.RENAME,
                            Capability.IMAGES}),
    adapter="controller.clouds.providers.docker.adapter:DockerAdapter",
    proved="e2e:podman API service",
    stopped_is_free=False,  # containers share the host: stopping one saves nothing billed
)
