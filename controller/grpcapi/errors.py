"""The one place domain errors become gRPC status codes."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from controller import errors

log = logging.getLogger(__name__)

_CODES: list[tuple[type[errors.OvercastError], grpc.StatusCode]] = [
    (errors.BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Invalid, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ProviderUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ProviderError, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: errors.OvercastError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


F = TypeVar("F", bound=Callable[..., Any])


async def abort_for(exc: Exception, context: grpc.aio.ServicerContext, where: str) -> None:
    """The one translation: a domain error aborts with its code and message; anything else
    is logged with an id and answered INTERNAL with only that id."""
    if isinstance(exc, errors.OvercastError):
        await context.abort(status_for(exc), exc.message)
    err_id = uuid.uuid4().hex[:12]
    log.error("unexpected error %s in %s", err_id, where, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error {err_id}")


def mapped(fn: F) -> F:
    """Wrap a unary servicer method with :func:`abort_for`."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_for(exc, context, fn.__name__)

    return wrapper  # type: ignore[return-value]


def mapped_stream(fn: F) -> F:
    """The same for server-streaming methods (async generators)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_for(exc, context, fn.__name__)

    return wrapper  # type: ignore[return-value]
