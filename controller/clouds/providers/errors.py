"""The one place libcloud's (and the network's) failures become the domain's errors.

A refused credential is :class:`CredentialsRefused` (422) naming the refused field when it is
known: an adapter that can tell from the provider's answer which field it was marks the
libcloud error with :func:`blame` (AWS's and Alibaba's error codes do), else the adapter's
``credential`` (the one a refusal of that provider is about) is named."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from controller.errors import (
    Conflict,
    CredentialsRefused,
    Invalid,
    NotFound,
    OvercastError,
    ProviderError,
    ProviderUnavailable,
)

E = TypeVar("E", bound=BaseException)
_TAGS = re.compile(r"<[^>]+>")
_MAX_MESSAGE = 300


def clean(message: object) -> str:
    """A provider's message fit for a user: markup removed, one line, bounded, and never
    the repr of an exception chain."""
    text = _TAGS.sub(" ", str(message))
    text = " ".join(text.split())
    return text[:_MAX_MESSAGE] or "no message"


def blame(exc: E, credential: str, provider_code: str = "") -> E:
    """Mark a (libcloud) error with the credential field it refused, and the provider's own
    error code, for :func:`libcloud_errors` to name them."""
    setattr(exc, "credential", credential)  # noqa: B010 (libcloud's errors have no such field)
    if provider_code:
        setattr(exc, "provider_code", provider_code)  # noqa: B010
    return exc


def refused(provider: str, message: str, credential: str = "",
            **details: Any) -> CredentialsRefused:
    """The error of a refused credential: ``message`` in words, ``credential`` the field."""
    return CredentialsRefused(message, credential or None, provider=provider, **details)


@contextmanager
def libcloud_errors(provider: str, what: str = "", credential: str = "") -> Iterator[None]:
    """Run a libcloud call; raise the domain error that says what failed, in words.

    ``what`` names the operation for messages ("listing machines"); ``credential`` the field
    a refusal is about when the error does not say (see :func:`blame`)."""
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import (
        InvalidCredsError,
        LibcloudError,
        MalformedResponseError,
        ServiceUnavailableError,
    )

    doing = f" while {what}" if what else ""
    details = {"provider": provider}
    try:
        yield
    except OvercastError:
        raise
    except InvalidCredsError as exc:
        provider_code = str(getattr(exc, "provider_code", "") or "")
        extra = {"provider_code": provider_code} if provider_code else {}
        which = getattr(exc, "credential", "") or credential
        raise refused(provider, _refusal(provider, which, doing, getattr(exc, "value", exc)),
                      which, **extra) from None
    except (ServiceUnavailableError, RateLimitReachedError) as exc:
        raise ProviderUnavailable(f"{provider} is unavailable{doing}: {clean(exc)}", details) from None
    except TimeoutError as exc:
        raise ProviderUnavailable(f"{provider} did not answer in time{doing}", details) from exc
    except ssl.SSLError as exc:
        raise ProviderUnavailable(f"TLS with {provider} failed{doing}: {clean(exc.reason or exc)}",
                                  details) from None
    except OSError as exc:  # refused, unreachable, DNS
        raise ProviderUnavailable(f"cannot reach {provider}{doing}: {clean(exc.strerror or exc)}",
                                  details) from None
    except BaseHTTPError as exc:
        code = getattr(exc, "code", 0) or 0
        raise _by_status(provider, int(code), clean(getattr(exc, "message", exc)), doing,
                         getattr(exc, "credential", "") or credential) from None
    except MalformedResponseError as exc:
        raise ProviderError(f"{provider} answered something unreadable{doing}: {clean(exc.value)}",
                            details) from None
    except LibcloudError as exc:
        code = int(getattr(exc, "http_code", 0) or 0)
        raise _by_status(provider, code, clean(getattr(exc, "value", exc)), doing,
                         getattr(exc, "credential", "") or credential) from None
    except Exception as exc:  # requests' errors and driver bugs alike
        name = type(exc).__name__
        if "Timeout" in name:
            raise ProviderUnavailable(f"{provider} did not answer in time{doing}", details) from None
        if "Connection" in name:
            raise ProviderUnavailable(f"cannot reach {provider}{doing}: {clean(exc)}", details) from None
        # a driver bug may raise without a message (StopIteration, KeyError()): name it
        raise ProviderError(f"{provider} failed{doing}: {clean(str(exc) or name)}",
                            details) from None


def _refusal(provider: str, credential: str, doing: str, reason: object) -> str:
    which = f" ({credential})" if credential else ""
    return f"{provider} refused the credentials{which}{doing}: {clean(reason)}"


def _by_status(provider: str, code: int, message: str, doing: str,
               credential: str = "") -> OvercastError:
    details: dict[str, Any] = {"provider": provider, "status": code}
    if code in (401, 403):
        return refused(provider, _refusal(provider, credential, doing, message), credential,
                       status=code)
    if code == 404:
        return NotFound(f"{provider} has no such resource{doing}: {message}", details)
    if code == 409:
        return Conflict(f"{provider} refused{doing}, as things stand: {message}", details)
    if code in (400, 422):
        return Invalid(f"{provider} refused the request{doing}: {message}", None, **details)
    if code in (429, 502, 503, 504):
        return ProviderUnavailable(f"{provider} is unavailable{doing}: {message}", details)
    return ProviderError(f"{provider} failed{doing}: {message}", details)
