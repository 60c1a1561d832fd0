"""The one place libcloud's (and the network's) failures become the domain's errors."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from controller.errors import (
    Conflict,
    Invalid,
    NotFound,
    OvercastError,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
)

_TAGS = re.compile(r"<[^>]+>")
_MAX_MESSAGE = 300


def clean(message: object) -> str:
    """A provider's message fit for a user: markup removed, one line, bounded, and never
    the repr of an exception chain."""
    text = _TAGS.sub(" ", str(message))
    text = " ".join(text.split())
    return text[:_MAX_MESSAGE] or "no message"


@contextmanager
def libcloud_errors(provider: str, what: str = "") -> Iterator[None]:
    """Run a libcloud call; raise the domain error that says what failed, in words.

    ``what`` names the operation for messages ("listing machines")."""
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
        raise ProviderAuthError(f"{provider} refused the credentials{doing}: "
                                f"{clean(getattr(exc, 'value', exc))}", details) from None
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
        raise _by_status(provider, int(code), clean(getattr(exc, "message", exc)), doing) from None
    except MalformedResponseError as exc:
        raise ProviderError(f"{provider} answered something unreadable{doing}: {clean(exc.value)}",
                            details) from None
    except LibcloudError as exc:
        code = int(getattr(exc, "http_code", 0) or 0)
        raise _by_status(provider, code, clean(getattr(exc, "value", exc)), doing) from None
    except Exception as exc:  # requests' errors and driver bugs alike
        name = type(exc).__name__
        if "Timeout" in name:
            raise ProviderUnavailable(f"{provider} did not answer in time{doing}", details) from None
        if "Connection" in name:
            raise ProviderUnavailable(f"cannot reach {provider}{doing}: {clean(exc)}", details) from None
        raise ProviderError(f"{provider} failed{doing}: {clean(exc)}", details) from None


def _by_status(provider: str, code: int, message: str, doing: str) -> OvercastError:
    details: dict[str, Any] = {"provider": provider, "status": code}
    if code in (401, 403):
        return ProviderAuthError(f"{provider} refused the credentials{doing}: {message}", details)
    if code == 404:
        return NotFound(f"{provider} has no such resource{doing}: {message}", details)
    if code == 409:
        return Conflict(f"{provider} refused{doing}, as things stand: {message}", details)
    if code in (400, 422):
        return Invalid(f"{provider} refused the request{doing}: {message}", None, **details)
    if code in (429, 502, 503, 504):
        return ProviderUnavailable(f"{provider} is unavailable{doing}: {message}", details)
    return ProviderError(f"{provider} failed{doing}: {message}", details)
