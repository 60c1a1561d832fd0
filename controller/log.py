"""Logging set-up: one logger per module, plus ``overcast.access`` and ``overcast.audit``."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from aiohttp import web_log

ACCESS = logging.getLogger("overcast.access")
AUDIT = logging.getLogger("overcast.audit")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(level: str = "info", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if as_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp logs every request at INFO through this logger; ours is quieter by default
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class AccessLogger(web_log.AccessLogger):
    """aiohttp's access log, with credentials carried in a query string (the one-use ticket
    of a shell's WebSocket) replaced before the line is written."""

    SECRET_PARAMS = ("ticket",)

    def log(self, request: Any, response: Any, time: float) -> None:
        if request is not None and any(p in request.query for p in self.SECRET_PARAMS):
            url = request.rel_url.update_query(
                {p: "REDACTED" for p in self.SECRET_PARAMS if p in request.query})
            request = request.clone(rel_url=url)
        super().log(request, response, time)
