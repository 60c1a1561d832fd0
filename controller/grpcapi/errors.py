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


def mapped(fn: F) -> F:
    """Wrap a unary servicer method: domain errors abort with their code and message;
    anything else is logged with an id and answered INTERNAL with only that id."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except errors.OvercastError as exc:
            await context.abort(status_for(exc), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            err_id = uuid.uuid4().hex[:12]
            log.exception("unexpected error %s in %s", err_id, fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error {err_id}")

    return wrapper  # type: ignore[return-value]


def mapped_stream(fn: F) -> F:
    """The same for server-streaming methods (async generators)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in fn(self, request, context):
                yield item
        except errors.OvercastError as exc:
            await context.abort(status_for(exc), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            err_id = uuid.uuid4().hex[:12]
            log.exception("unexpected error %s in %s", err_id, fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error {err_id}")

    return wrapper  # type: ignore[return-value]
