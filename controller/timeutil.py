"""Times as the API shows them: ISO 8601 UTC strings with a trailing Z."""

from __future__ import annotations

import datetime as dt
import time


def iso(ts: float | None = None) -> str:
    t = dt.datetime.fromtimestamp(time.time() if ts is None else ts, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> float:
    """Seconds since the epoch from an ISO 8601 string (``Z`` or offset; date alone is midnight
    UTC). Raises ValueError."""
    v = value.strip()
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    t = dt.datetime.fromisoformat(v)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()
