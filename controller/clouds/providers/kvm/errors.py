"""libvirt's errors mapped to the domain's, in one context manager (the KVM adapter talks to
libvirt itself, so libcloud's mapping in ``providers.errors`` does not see these)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from controller.clouds.providers.base import Unsupported
from controller.clouds.providers.errors import clean
from controller.errors import (
    Conflict,
    CredentialsRefused,
    Invalid,
    NotFound,
    OvercastError,
    ProviderError,
    ProviderUnavailable,
)

log = logging.getLogger(__name__)

PROVIDER = "kvm"

# libvirt's virErrorNumber values (stable across releases: they are ABI)
_NOT_FOUND = {42, 72, 43}                         # no domain, no snapshot, no network
_AUTH = {45, 79, 94, 88, 29}                      # auth failed/cancelled/unavailable, denied
_UNREACHABLE = {5, 6, 38, 39, 68, 85, 98, 86}     # no/invalid connection, system, RPC,
#                                                   timeout, ssh, libssh, agent unresponsive
_INVALID = {55, 8, 27, 35, 67}                    # operation invalid, invalid arg, XML, config
_UNSUPPORTED = {3, 84}                            # no support, operation unsupported
_EXISTS = {28}                                    # domain exists


def quiet_libvirt(libvirt: Any) -> None:
    """libvirt prints every error to stderr by default; errors here are raised and mapped."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@contextmanager
def libvirt_errors(what: str = "", target: str = "", credential: str = "") -> Iterator[None]:
    """Run libvirt calls; raise the domain error that says what failed, in words.

    ``what`` names the operation ("listing machines"), ``target`` the hypervisor,
    ``credential`` the field a refusal is about (``hosts[<i>].key``)."""
    import libvirt

    on = f" on {target}" if target else ""
    doing = f" while {what}{on}" if what else on
    details: dict[str, Any] = {"provider": PROVIDER}
    try:
        yield
    except OvercastError:
        raise
    except libvirt.libvirtError as exc:
        code = int(exc.get_error_code() or 0)
        message = clean(exc.get_error_message() or exc)
        details["libvirt_error"] = code
        if code in _NOT_FOUND:
            raise NotFound(f"kvm has no such resource{doing}: {message}", details) from None
        if code in _AUTH:
            which = f" ({credential})" if credential else ""
            raise CredentialsRefused(f"kvm refused the credentials{which}{doing}: {message}",
                                     credential or None, **details) from None
        if code in _UNREACHABLE:
            raise ProviderUnavailable(f"cannot reach kvm{doing}: {message}", details) from None
        if code in _INVALID:
            raise Invalid(f"kvm refused the request{doing}: {message}", **details) from None
        if code in _UNSUPPORTED:
            raise Unsupported(f"kvm does not support this{doing}: {message}",
                              **details) from None
        if code in _EXISTS:
            raise Conflict(f"kvm already has it{doing}: {message}", details) from None
        raise ProviderError(f"kvm failed{doing}: {message}", details) from None
    except (TimeoutError, OSError) as exc:
        raise ProviderUnavailable(f"cannot reach kvm{doing}: {clean(exc)}", details) from None
    except Exception as exc:  # a driver bug: say so once, without a traceback to the user
        log.warning("kvm failed%s: %s", doing, type(exc).__name__)
        raise ProviderError(f"kvm failed{doing}: {clean(exc)}", details) from None
