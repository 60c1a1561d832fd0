"""The notification document, its states, and the one error a transport raises.

    notification/<org>/<id>   {id, org, kind (email|webhook), status, to, subject, url
                               (redacted), method, attempts, max_attempts, next_attempt,
                               last_error, results, context, created, sent, _created_at,
                               _payload (the message: e-mail text/html, or the webhook body),
                               _url and _headers (sealed: they may carry credentials)}
    notifypending/<org>/<id>  present while the notification waits to be sent (found on start)

A notification is written before it is sent, so nothing queued is lost by a stop or a
crash: ``pending`` ones are picked up again on start."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from controller.errors import OvercastError
from controller.store.docs import DocKind

NOTIFICATION = DocKind("notification")
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


def redact_url(url: str) -> str:
    """``url`` without user name and password, query values masked: what views, messages
    and the audit log show (a webhook URL often carries a token)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(invalid URL)"
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before attempt ``attempts + 1``: base, 2 x base, 4 x base... at most cap."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))
