"""Logging set-up: one logger per module, plus ``overcast.access`` and ``overcast.audit``."""

from __future__ import annotations

import json
import logging
import sys

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
