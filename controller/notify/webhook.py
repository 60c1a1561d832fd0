"""Webhook calls over aiohttp: one request, no redirects followed, a bounded answer read.
The controller's local-address policy (``allow_local_clouds``, see
:mod:`controller.clouds.targets`) applies, checked again at every attempt."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp

from controller.clouds.targets import local_targets
from controller.notify.model import DeliveryError

RETRY_STATUSES = frozenset({408, 425, 429})


async def check_target(url: str, allow_local: bool) -> None:
    """Raise DeliveryError (not retryable) when ``url`` is not http(s) or points at the
    controller's own host or a link-local address and that is not allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError("a webhook URL must be http:// or https:// with a host", retryable=False)
    if allow_local:
        return
    reasons = await asyncio.to_thread(local_targets, {"url": url})
    if reasons:
        raise DeliveryError(reasons[0].removeprefix("url: ") + ": webhooks to the controller's "
                            "own host or link-local addresses are refused unless the operator "
                            "sets allow_local_clouds", retryable=False)


class HttpPoster:
    """The :class:`controller.notify.service.Poster` of the controller."""

    def __init__(self, timeout: float, allow_local: bool) -> None:
        self.timeout = timeout
        self.allow_local = allow_local

    async def send(self, url: str, method: str, headers: dict[str, str], body: bytes | None) -> str:
        await check_target(url, self.allow_local)
        host = urlsplit(url).hostname
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as s, s.request(
                    method, url, data=body, headers=headers, allow_redirects=False) as r:
                snippet = (await r.content.read(300)).decode(errors="replace").strip()
                if 200 <= r.status < 300:
                    return f"HTTP {r.status}"
                if 300 <= r.status < 400:
                    raise DeliveryError(f"HTTP {r.status}: redirects are not followed (to "
                                        f"{r.headers.get('Location', '?')[:200]})", retryable=False)
                said = f": {snippet}" if snippet else ""
                raise DeliveryError(f"HTTP {r.status} {r.reason or ''}{said}".strip(),
                                    retryable=r.status >= 500 or r.status in RETRY_STATUSES)
        except aiohttp.ClientConnectorError as exc:
            why = exc.os_error.strerror if exc.os_error is not None else str(exc)
            raise DeliveryError(f"cannot connect to {host}: {why or exc}") from None
        except TimeoutError:
            raise DeliveryError(f"{host} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{host}: {type(exc).__name__}: {exc}"[:300]) from None
