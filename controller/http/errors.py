"""The one place HTTP errors are made: every failure leaves as
``{"error": {"code", "message", "details"}}`` with its status; unexpected exceptions are
logged once with an id that the 500 response carries, and no traceback reaches the client."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from controller.errors import OvercastError, RateLimited

log = logging.getLogger(__name__)


class UnsupportedMedia(OvercastError):
    """The request body is not JSON (``Content-Type: application/json``)."""

    status = 415
    code = "unsupported_media"

_HTTP_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media",
               422: "invalid", 429: "rate_limited"}


def error_response(status: int, code: str, message: str, details: dict[str, object] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers=headers)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except OvercastError as exc:
        if exc.status >= 500:
            err_id = uuid.uuid4().hex[:12]
            log.error("error %s on %s %s: %s", err_id, request.method, request.path, exc.message)
            return error_response(exc.status, exc.code, exc.message, dict(exc.details, error_id=err_id))
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="overcast"'}
        return error_response(exc.status, exc.code, exc.message, exc.details, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return error_response(413, "too_large", "the request body is too large",
                                  {"limit": request.app._client_max_size})
        message = {404: f"no such endpoint: {request.method} {request.path}",
                   405: f"{request.method} is not allowed on {request.path}"}.get(exc.status, exc.reason)
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "error"), message,
                              headers={"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None)
    except Exception:  # the last line: log with an id, answer without internals
        err_id = uuid.uuid4().hex[:12]
        log.exception("unexpected error %s on %s %s", err_id, request.method, request.path)
        return error_response(500, "internal", "internal error; the server log has the details",
                              {"error_id": err_id})
