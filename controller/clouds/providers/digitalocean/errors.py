"""DigitalOcean's failures in words: the shared libcloud mapping, with a refused token named."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from controller.clouds.providers.errors import libcloud_errors
from controller.errors import CredentialsRefused

PROVIDER = "digitalocean"


@contextmanager
def do_errors(what: str = "") -> Iterator[None]:
    """Run a libcloud call against DigitalOcean; raise the domain's errors. A 401 (libcloud's
    ``InvalidCredsError``) becomes :class:`CredentialsRefused` saying the API token (``token``)
    was refused;
    the token itself never appears. A 409 (the resource is busy: attached, in use)
    is :class:`Conflict`."""
    try:
        with libcloud_errors(PROVIDER, what):
            yield
    except CredentialsRefused as exc:
        doing = f" while {what}" if what else ""
        raise CredentialsRefused(
            f"DigitalOcean refused the API token{doing} (revoked, expired, mistyped, or "
            f"without the scope this needs)", "token",
            **{k: v for k, v in exc.details.items() if k != "field"}) from None
