"""The notification document, its states, and the one error a transport raises.

    notification/<org>/<id>   {id, org, kind (email|webhook), status, to, subject, url
                               (scheme://host/… and a fingerprint), method, attempts, max_attempts, next_attempt,
                               last_error, results, context, created, sent, _created_at,
                               _payload (the message: e-mail text/html, or the webhook body),
                               _url and _headers (sealed: they may carry credentials)}
    notifypending/<org>/<id>  present while the notification waits to be sent (found on start)

A notification is written before it is sent, so nothing queued is lost by a stop or a
crash: ``pending`` ones are picked up again on start."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

from controller.errors import OvercastError
from controller.store.docs import DocKind


def _v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 2: the URL shown as :func:`redact_url` shows it (version 1 showed its path)."""
    if doc.get("url"):
        doc["url"] = shown_url(str(doc["url"]))
    return doc


NOTIFICATION = DocKind("notification", 2, {1: _v2})
KINDS = ("email", "webhook")
# pending: waits for its next attempt; sent: delivered; failed: given up (or refused for
# good: a bad address, a 4xx answer) and kept, visible, until retried by hand
STATUSES = ("pending", "sent", "failed")
WEBHOOK_METHODS = ("POST", "PUT", "PATCH", "DELETE", "GET")
MAX_RECIPIENTS = 100
MAX_SUBJECT = 998  # RFC 5322's line limit
MAX_TEXT = 256 * 1024
MAX_BODY = 256 * 1024
MAX_HEADERS = 32
MAX_URL = 2000
# header names whose values are secrets whatever the caller says (sealed, shown as ***)
_SECRET_HEADER = re.compile(r"auth|token|secret|key|cookie|password|signature", re.I)
_REDACTED = re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s]*/\u2026 \([0-9a-f]{8}\)$")
_EMAIL = re.compile(r"^[^@\s<>,;\"']{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$|"
                    r"^[^@\s<>,;\"']{1,64}@(localhost|\[[0-9a-fA-F:.]+\])$")


class DeliveryError(OvercastError):
    """A notification could not be delivered. ``retryable``: worth another attempt (a
    connection refused, a timeout, a 5xx or 4xx-temporary answer) or not (a refused
    address, a 4xx answer, a target the policy forbids)."""

    code = "delivery_failed"
    status = 502

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def notification_key(org: str, nid: str) -> str:
    return f"notification/{org}/{nid}"


def pending_key(org: str, nid: str) -> str:
    return f"notifypending/{org}/{nid}"


def is_email(value: str) -> bool:
    return bool(_EMAIL.match(value))


def secret_header(name: str) -> bool:
    return bool(_SECRET_HEADER.search(name))


def url_fingerprint(url: str) -> str:
    """The first 8 hex digits of the URL's SHA-256: tells two webhooks apart, reveals none."""
    return hashlib.sha256(url.encode()).hexdigest()[:8]


def redact_url(url: str) -> str:
    """What views, messages and the audit log show of a webhook URL: its scheme, host and
    port, then ``/…`` and the URL's fingerprint, e.g. ``https://hooks.slack.com/… (1a2b3c4d)``.
    Slack, Discord and Teams carry the token in the path, others in the query or the user
    name: none of those is shown. The full URL is kept sealed."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    where = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{where}/\u2026 ({url_fingerprint(url)})"


def is_redacted(url: str) -> bool:
    """Whether ``url`` is what :func:`redact_url` shows (never a URL one can call)."""
    return bool(_REDACTED.match(url))


def shown_url(stored: str) -> str:
    """A stored ``url`` field as views show it: documents written before URLs were redacted
    this way held the URL with only its credentials masked."""
    return stored if not stored or is_redacted(stored) else redact_url(stored)


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before attempt ``attempts + 1``: base, 2 x base, 4 x base... at most cap."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))
