"""When a schedule runs: the ``when`` object (interval, crontab or one-off) checked and
normalised, and the occurrences it gives between ``start_after`` and ``expires``.

Interval occurrences are ``anchor + k * every``: the anchor is ``start_after`` when given
(the first run is then at ``start_after``), else the time the interval was set (the first run
one interval later). Crontab fields are read on the wall clock of ``when.timezone`` (an IANA
name; default UTC). A one-off ``datetime`` without an offset is in that time zone too."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from controller.errors import BadRequest
from controller.schedules.cron import NAMES, Cron, CronError, expression, split_expression

PERIODS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
TYPES = ("interval", "crontab", "one_off")
MAX_EVERY = 366 * 86400
MAX_COUNT = 1000  # occurrences counted at most when telling how many were missed


@dataclass(frozen=True)
class When:
    kind: str
    every: float = 0.0            # interval: seconds
    cron: Cron | None = None
    at: float = 0.0               # one_off: seconds since the epoch
    tz: ZoneInfo = ZoneInfo("UTC")


def zone(name: Any, field: str) -> ZoneInfo:
    if name in (None, ""):
        return ZoneInfo("UTC")
    if not isinstance(name, str) or len(name) > 64 or ".." in name or name.startswith("/"):
        raise BadRequest(f"{field} must be an IANA time zone name such as Europe/Berlin",
                         field=field)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"{field}: unknown time zone {name!r} (an IANA name such as "
                         "Europe/Berlin, or UTC)", field=field) from None


def parse_time(value: Any, field: str, tz: ZoneInfo | None = None) -> float:
    """Seconds since the epoch from ISO 8601 (``2024-06-01T10:00:00Z``) or Mist's
    ``2024-06-01 10:00:00`` (no offset: in ``tz``, default UTC). BadRequest naming ``field``."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise BadRequest(f"{field} must be a date and time such as 2030-01-31T18:00:00Z",
                         field=field)
    v = value.strip().replace(" T", "T")
    if v.endswith(("Z", "z")):
        v = v[:-1] + "+00:00"
    try:
        t = dt.datetime.fromisoformat(v)
    except ValueError:
        raise BadRequest(f"{field}: {value!r} is not a date and time such as "
                         "2030-01-31T18:00:00Z", field=field) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz or ZoneInfo("UTC"))
    return t.timestamp()


def _every(raw: dict[str, Any], field: str, min_interval: int) -> tuple[int, str]:
    # the spec's schema says every/period; its examples say value/unit: both are taken
    every = raw.get("every", raw.get("value"))
    period = raw.get("period", raw.get("unit", "minutes"))
    if isinstance(every, bool) or not isinstance(every, int):
        raise BadRequest(f"{field}.every must be a whole number (of {period})",
                         field=f"{field}.every")
    if period not in PERIODS:
        raise BadRequest(f"{field}.period must be one of: {', '.join(PERIODS)}",
                         field=f"{field}.period")
    if every < 1:
        raise BadRequest(f"{field}.every must be at least 1 (an interval of {every} {period} "
                         "never ends)", field=f"{field}.every")
    seconds = every * PERIODS[period]
    if seconds < min_interval:
        raise BadRequest(f"{field}: the interval must be at least {min_interval} seconds (the "
                         "operator's schedule_min_interval)", field=f"{field}.every")
    if seconds > MAX_EVERY:
        raise BadRequest(f"{field}: the interval must be at most 366 days",
                         field=f"{field}.every")
    return every, period


def parse_when(raw: Any, now: float, min_interval: int, field: str = "when",
               check_future: bool = True) -> dict[str, Any]:
    """The normalised ``when`` (what is stored and shown); BadRequest naming the field (and,
    for a cron mistake, the position) otherwise. ``max_run_count`` is the caller's."""
    if not isinstance(raw, dict):
        raise BadRequest(f"{field} must be an object with schedule_type", field=field)
    kind = raw.get("schedule_type")
    if kind not in TYPES:
        raise BadRequest(f"{field}.schedule_type must be one of: {', '.join(TYPES)}",
                         field=f"{field}.schedule_type")
    known = {"schedule_type", "max_run_count", "timezone"} | {
        "interval": {"every", "period", "value", "unit"},
        "crontab": {*NAMES, "expression"}, "one_off": {"datetime"}}[kind]
    for k in raw:
        if k not in known:
            raise BadRequest(f"unknown field {field}.{k} for a {kind} schedule",
                             field=f"{field}.{k}")
    tz = zone(raw.get("timezone"), f"{field}.timezone")
    out: dict[str, Any] = {"schedule_type": kind}
    if kind == "interval":
        out["every"], out["period"] = _every(raw, field, min_interval)
        return out
    out["timezone"] = tz.key
    if kind == "one_off":
        at = parse_time(raw.get("datetime"), f"{field}.datetime", tz)
        if check_future and at <= now:
            raise BadRequest(f"{field}.datetime {raw.get('datetime')} is in the past",
                             field=f"{field}.datetime")
        out["datetime"] = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return out
    fields = _cron_fields(raw, field)
    out.update(fields)
    out["expression"] = expression(fields)
    if Cron.parse(fields).next_after(now, tz) is None:
        raise BadRequest(f"{field}: {out['expression']!r} never happens (check day_of_month "
                         "against month_of_year)", field=f"{field}.day_of_month", position=1)
    return out


def _cron_fields(raw: dict[str, Any], field: str) -> dict[str, str]:
    if "expression" in raw and any(n in raw for n in NAMES):
        # a schedule read back and sent again has both: they must say the same
        given = _cron_fields({n: raw.get(n) for n in NAMES}, field)
        if " ".join(str(raw["expression"]).split()) != expression(given):
            raise BadRequest(f"{field}: expression and the five fields disagree (give one)",
                             field=f"{field}.expression")
        return given
    if "expression" in raw:
        expr = raw["expression"]
        if not isinstance(expr, str):
            raise BadRequest(f"{field}.expression must be text such as '*/5 * * * *'",
                             field=f"{field}.expression")
        try:
            Cron.parse_expression(expr)
            return split_expression(expr)
        except CronError as exc:
            raise BadRequest(f"{field}.expression: {exc.reason} at position {exc.position} "
                             f"({exc.field.replace('_', ' ')})", field=f"{field}.expression",
                             position=exc.position, part=exc.field) from None
    fields: dict[str, str] = {}
    for n in NAMES:
        v = raw.get(n)
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str):
            raise BadRequest(f"{field}.{n} is required: cron text such as '*/5' or '0'",
                             field=f"{field}.{n}")
        fields[n] = v
    try:
        Cron.parse(fields)
    except CronError as exc:
        raise BadRequest(f"{field}.{exc.field}: {exc.reason} at position {exc.position}",
                         field=f"{field}.{exc.field}", position=exc.position) from None
    return fields


def compile_when(doc: dict[str, Any]) -> When:
    """The stored (already checked) ``when`` made ready for computing."""
    kind = doc["schedule_type"]
    tz = ZoneInfo(doc.get("timezone") or "UTC")
    if kind == "interval":
        return When(kind, every=float(doc["every"] * PERIODS[doc["period"]]), tz=tz)
    if kind == "one_off":
        return When(kind, at=parse_time(doc["datetime"], "when.datetime"), tz=tz)
    return When(kind, cron=Cron.parse({n: doc[n] for n in NAMES}), tz=tz)


@dataclass(frozen=True)
class Window:
    """What bounds a schedule's occurrences: the interval's anchor, and start_after/expires
    (0: none)."""

    anchor: float
    start_after: float = 0.0
    expires: float = 0.0


def next_occurrence(w: When, after: float, win: Window) -> float | None:
    """The first occurrence strictly after ``after`` that is at or after start_after and
    before expires; None when there is none."""
    t: float | None
    if w.kind == "interval":
        base = win.start_after if win.start_after else win.anchor + w.every
        if after < base:
            t = base
        else:
            t = base + (math.floor((after - base) / w.every) + 1) * w.every
    elif w.kind == "one_off":
        t = w.at if w.at > after and w.at >= win.start_after else None
    else:
        assert w.cron is not None
        start = max(after, win.start_after - 0.001) if win.start_after else after
        t = w.cron.next_after(start, w.tz)
    if t is None or (win.expires and t >= win.expires):
        return None
    return t


def count_between(w: When, first: float, now: float, win: Window) -> int:
    """Occurrences from ``first`` (one, inclusive) to ``now`` (inclusive), at most MAX_COUNT."""
    if first > now:
        return 0
    if w.kind == "interval":
        return int(min(MAX_COUNT, math.floor((now - first) / w.every) + 1))
    n = 1
    t: float | None = first
    while n < MAX_COUNT:
        t = next_occurrence(w, t, win) if t is not None else None
        if t is None or t > now:
            break
        n += 1
    return n
