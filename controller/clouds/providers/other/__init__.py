"""Other server (bare metal): hosts reached over SSH by address and private key.

Mist v2 ``OtherCredentials``: ``hosts``, a list of ``{host, alias, key, user, port}``; here
each item may also carry ``host_key`` (a known_hosts line or an ``SHA256:``/``MD5:``
fingerprint) to pin the host's key. Without it the first key seen is accepted and reported
in the machine's ``extra.host_key`` / ``extra.host_key_fingerprint`` so it can be pinned.

Secrets inside the list. ``hosts`` is declared ``secret=False``: addresses, users, ports,
aliases and host keys are configuration. Each item's ``key`` (``ITEM_SECRETS``) is a secret:
:func:`split_credentials` turns a request's ``{"hosts": [...]}`` into ``config["hosts"]``
without keys plus ``secrets["hosts.<i>.key"]`` (``<i>`` = the item's position), which the
service seals like any secret field; the adapter reads them back from ``secrets`` and
refuses a key found in ``config`` (it would have been stored in clear).

Machines: one per host, id ``host:port``, named by its alias; ``running`` with its facts when
it answers, ``unreachable`` (reason in ``extra.error``) when not. Reboot runs ``reboot``
(``sudo -n reboot`` for another user). Stop is not offered: without out-of-band power
control (IPMI, Wake-on-LAN) a powered-off host cannot be started again from here."""

from __future__ import annotations

from controller.clouds.providers.base import Capability, Field, ProviderSpec
from controller.clouds.providers.other.hosts import (
    ITEM_SECRETS,
    parse_hosts,
    secret_name,
    split_credentials,
)

__all__ = ["ITEM_SECRETS", "SPEC", "parse_hosts", "secret_name", "split_credentials"]

SPEC = ProviderSpec(
    name="other",
    title="Other server (bare metal)",
    fields=(
        Field("hosts", required=True, kind="list", secret=False,
              help="Servers reached over SSH: each {host, key, alias?, user? (root), port? (22), "
                   "host_key? (known_hosts line or SHA256: fingerprint to pin)}; each key is "
                   "a private key (OpenSSH or PEM) and is stored as a secret"),
    ),
    capabilities=frozenset({Capability.MACHINES, Capability.REBOOT}),
    adapter="controller.clouds.providers.other.adapter:OtherAdapter",
    proved="e2e:sshd in network namespaces",
    stopped_is_free=False,  # a server of one's own costs the same on or off
)
