"""Equinix Metal answers with the HTTP status kept: libcloud's response raises a bare
``Exception`` (no status) for every error but 401, and loses the 401's message."""

from __future__ import annotations

from typing import Any

from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError
from libcloud.compute.drivers.equinixmetal import EquinixMetalResponse


class EquinixResponse(EquinixMetalResponse):
    def parse_error(self) -> Any:
        try:
            body = self.parse_body()
        except Exception:  # an unreadable error body still has a status
            body = {}
        message = _message(body) or f"HTTP {self.status}"
        if int(self.status) == 401:
            raise InvalidCredsError(message)
        raise BaseHTTPError(int(self.status), message)


def _message(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body or "")
    if body.get("errors"):
        errors = body["errors"]
        return "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
    return str(body.get("error") or body.get("message") or "")
