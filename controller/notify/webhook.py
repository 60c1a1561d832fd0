"""Webhook calls over aiohttp: one request, no redirects followed, no proxy from the
environment. Where it may connect is :mod:`controller.notify.targets`' policy, checked at
each attempt and again when the connection is made: :class:`GuardedResolver` resolves the
host, checks every address it gets and hands aiohttp only the allowed ones (a name that
resolved to a public address when it was checked and to 10.0.0.5 or 127.0.0.1 a moment
later is refused: DNS rebinding); an address written in the URL (which aiohttp does not
resolve) is checked before the request. A failed answer is reported by its status and
reason only: what the receiver said is not read (a member must not be able to read an
internal service's answers through a webhook's errors)."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from controller.notify import targets
from controller.notify.model import DeliveryError, redact_url

RETRY_STATUSES = frozenset({408, 425, 429})


class TargetRefused(OSError):
    """The policy forbids every address the host resolves to (aiohttp wraps it in
    ClientConnectorError)."""


def _printable(text: str, limit: int) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:limit].strip()


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver and keeps only the addresses the policy allows;
    none: TargetRefused with the reason."""

    def __init__(self, allow_private: bool, allow_local: bool) -> None:
        self.allow_private = allow_private
        self.allow_local = allow_local

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise OSError(exc.errno, f"cannot resolve {host}: {exc.strerror}") from None
        kept: list[ResolveResult] = []
        why = ""
        for fam, _, proto, _, sockaddr in infos:
            addr = str(sockaddr[0])
            ip = targets.parse_ip(addr)
            refused = (targets.refusal(ip, self.allow_private, self.allow_local, host)
                       if ip is not None else "an address that cannot be read")
            if refused:
                why = why or refused
                continue
            kept.append({"hostname": host, "host": addr, "port": int(sockaddr[1]),
                         "family": fam, "proto": proto,
                         "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV})
        if not kept:
            raise TargetRefused(why or f"{host} resolves to no address")
        return kept

    async def close(self) -> None:
        return None


async def check_target(url: str, allow_private: bool, allow_local: bool) -> None:
    """Raise DeliveryError (not retryable) when ``url`` is not http(s) with a host, or its
    host is refused by the policy (a name as it resolves now: an early, clear error; the
    connection checks again what it connects to)."""
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname
    except ValueError:
        scheme, host = "", None
    if scheme not in ("http", "https") or not host:
        raise DeliveryError("a webhook URL must be http:// or https:// with a host", retryable=False)
    why = await asyncio.to_thread(targets.host_refusal, host, allow_private, allow_local)
    if why:
        raise DeliveryError(why, retryable=False)


class HttpPoster:
    """The :class:`controller.notify.service.Poster` of the controller."""

    def __init__(self, timeout: float, allow_local: bool, allow_private: bool = False) -> None:
        self.timeout = timeout
        self.allow_local = allow_local
        self.allow_private = allow_private

    def _connector(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(resolver=GuardedResolver(self.allow_private, self.allow_local),
                                    use_dns_cache=False, limit=1)

    async def send(self, url: str, method: str, headers: dict[str, str], body: bytes | None) -> str:
        await check_target(url, self.allow_private, self.allow_local)
        host = urlsplit(url).hostname
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout, connector=self._connector(),
                                             trust_env=False) as s, s.request(
                    method, url, data=body, headers=headers, allow_redirects=False) as r:
                if 200 <= r.status < 300:
                    return f"HTTP {r.status}"
                reason = _printable(r.reason or "", 60)
                if 300 <= r.status < 400:
                    where = r.headers.get("Location", "")
                    to = redact_url(where) if "://" in where else "elsewhere"
                    raise DeliveryError(f"HTTP {r.status} {reason}: redirects are not followed "
                                        f"(to {to})", retryable=False)
                raise DeliveryError(f"HTTP {r.status} {reason}".strip(),
                                    retryable=r.status >= 500 or r.status in RETRY_STATUSES)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, TargetRefused):
                raise DeliveryError(str(exc.os_error), retryable=False) from None
            why = exc.os_error.strerror if exc.os_error is not None else ""
            raise DeliveryError(f"cannot connect to {host}: {why or type(exc).__name__}") from None
        except TimeoutError:
            raise DeliveryError(f"{host} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise DeliveryError(_safe(f"{host}: {type(exc).__name__}: {exc}", url)) from None


def _safe(message: str, url: str) -> str:
    """``message`` without the URL's path, query or credentials (aiohttp's errors may name
    the URL)."""
    return message.replace(url, redact_url(url))[:300]
