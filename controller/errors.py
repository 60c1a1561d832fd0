"""The one error tree of the controller's domain; the edges map it out once each.

    OvercastError                  500  (anything unexpected is wrapped as this)
    ├── Invalid                    422  a value is wrong (``details`` names the field)
    │   └── BadRequest             400  the request itself is malformed (JSON, query syntax)
    ├── Unauthenticated            401  no, expired or revoked credentials
    ├── Forbidden                  403  authenticated but not allowed (CSRF, role)
    ├── NotFound                   404  absent, or belongs to another organisation
    ├── Conflict                   409  already exists / changed meanwhile
    ├── TooLarge                   413  body over the size limit
    ├── RateLimited                429  too many attempts (``retry_after`` seconds)
    └── ProviderError              502  a cloud or agent failed (``retryable``)
        ├── ProviderAuthError      502  a machine or agent refused a key
        │   └── CredentialsRefused 422  a cloud refused its credentials (``details.field``
        │                               names which, ``credentials.<name>``, when it is clear)
        └── ProviderUnavailable    503

``routes`` and ``servicer`` modules never build HTTP responses or gRPC statuses for errors:
they raise these, and ``controller.http.errors`` / ``controller.grpcapi.errors`` translate.
"""

from __future__ import annotations

from typing import Any


class OvercastError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class Invalid(OvercastError):
    """A value in the request is not valid."""

    status = 422
    code = "invalid"

    def __init__(self, message: str, field: str | None = None, **details: Any) -> None:
        if field is not None:
            details["field"] = field
        super().__init__(message, details)


class BadRequest(Invalid):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class Unauthenticated(OvercastError):
    """Authentication is required."""

    status = 401
    code = "unauthenticated"


class Forbidden(OvercastError):
    """You are not allowed to do this."""

    status = 403
    code = "forbidden"


class NotFound(OvercastError):
    """Not found."""

    status = 404
    code = "not_found"


class Conflict(OvercastError):
    """The resource conflicts with an existing one."""

    status = 409
    code = "conflict"


class TooLarge(OvercastError):
    """The request body is too large."""

    status = 413
    code = "too_large"


class RateLimited(OvercastError):
    """Too many attempts; try again later."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, {"retry_after": retry_after})
        self.retry_after = retry_after


class ProviderError(OvercastError):
    """A cloud provider or agent failed."""

    status = 502
    code = "provider_error"
    retryable = False


class ProviderAuthError(ProviderError):
    """The provider refused the credentials."""

    code = "provider_auth"


class CredentialsRefused(ProviderAuthError):
    """The cloud refused the credentials.

    A 4xx: the request's credentials are wrong, not the controller. 422, not 401: the user's
    own session is fine (a 401 would make clients sign in again). ``credential`` is the
    field of the cloud's credentials that was refused when the provider makes it clear; it
    is named like the other credential errors, ``details.field = "credentials.<name>"``."""

    status = 422
    code = "provider_auth"

    def __init__(self, message: str, credential: str | None = None, **details: Any) -> None:
        if credential:
            details["field"] = f"credentials.{credential}"
        super().__init__(message, details)

    @property
    def credential(self) -> str:
        """The refused field's name ("" when the provider did not make it clear)."""
        return str(self.details.get("field", "")).removeprefix("credentials.")


class ProviderUnavailable(ProviderError):
    """The provider cannot be reached."""

    status = 503
    code = "provider_unavailable"
    retryable = True
