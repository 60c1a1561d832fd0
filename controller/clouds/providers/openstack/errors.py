"""OpenStack's failures in words: the shared libcloud mapping, with keystone's refusal named."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from controller.clouds.providers.errors import libcloud_errors
from controller.errors import CredentialsRefused, ProviderAuthError

PROVIDER = "openstack"


def token_refused(exc: ProviderAuthError) -> bool:
    """A service (nova, neutron...) answered 401 to a token keystone had issued: revoked or
    expired early. libcloud has dropped it by then, so the call may be tried once more."""
    return exc.details.get("status") == 401


@contextmanager
def os_errors(what: str = "") -> Iterator[None]:
    """Run a libcloud call against OpenStack; raise the domain's errors. Keystone refusing
    the password (libcloud's ``InvalidCredsError``) becomes :class:`CredentialsRefused` that
    says so and names ``password`` (keystone does not say whether the user or the password
    was wrong; the password is the likelier); the password never appears. A 409 (the resource is busy: wrong state,
    in use) is :class:`Conflict`."""
    try:
        with libcloud_errors(PROVIDER, what):
            yield
    except ProviderAuthError as exc:
        doing = f" while {what}" if what else ""
        details = {k: v for k, v in exc.details.items() if k != "field"}
        if token_refused(exc):
            raise CredentialsRefused(
                f"an OpenStack service refused the token keystone issued{doing} (revoked, or "
                f"the user has no role on the project there)", "user", **details) from None
        raise CredentialsRefused(
            f"OpenStack's identity service (keystone) refused the user, password, domain or "
            f"project{doing}", "password", **details) from None
