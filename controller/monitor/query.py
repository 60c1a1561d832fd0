"""Datapoint queries: a metric name with Prometheus label matchers, evaluated as an instant
vector (at ``time``) or a range matrix (``start``..``end`` every ``step``), answering in the
Prometheus shapes Mist's API returned.

Language (this issue; the monitoring issue widens it):
``metric`` or ``metric{label="v", label!="v", label=~"regex", label!~"regex"}``."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from controller.errors import BadRequest
from controller.monitor.tsdb import TSDB, Series
from controller.timeutil import parse_iso

_METRIC = re.compile(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|\})')
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000, "y": 31_536_000_000, None: 1000}
LOOKBACK_MS = 5 * 60 * 1000  # as Prometheus: a sample counts for 5 minutes
MAX_POINTS = 11_000  # per series in one range answer, as Prometheus


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, labels: dict[str, str] | Any) -> bool:
        v = labels.get(self.label, "")
        if self.op == "=":
            return bool(v == self.value)
        if self.op == "!=":
            return bool(v != self.value)
        hit = re.fullmatch(self.value, v) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]


def parse(query: str) -> Selector:
    if not query or len(query) > 4000:
        raise BadRequest("query must be a metric name with optional {label matchers}", field="query")
    m = _METRIC.match(query)
    if not m:
        raise BadRequest(f"query must start with a metric name: {query[:40]!r}", field="query")
    pos = m.end()
    matchers: list[Matcher] = []
    if pos < len(query) and query[pos] == "{":
        pos += 1
        if query[pos:].lstrip().startswith("}"):
            pos = query.index("}", pos) + 1
        else:
            while True:
                mm = _MATCHER.match(query, pos)
                if not mm:
                    raise BadRequest(f"bad label matcher at position {pos + 1}: use label=\"value\" "
                                     "(also !=, =~, !~)", field="query")
                value = re.sub(r"\\(.)", r"\1", mm.group(3))
                if mm.group(2) in ("=~", "!~"):
                    try:
                        re.compile(value)
                    except re.error as exc:
                        raise BadRequest(f"bad regular expression {value!r}: {exc}", field="query") from None
                matchers.append(Matcher(mm.group(1), mm.group(2), value))
                pos = mm.end()
                if mm.group(4) == "}":
                    break
    if query[pos:].strip():
        raise BadRequest(f"unexpected {query[pos:].strip()[:20]!r} in query (functions such as "
                         "rate() come with the monitoring issue)", field="query")
    return Selector(m.group(1), tuple(matchers))


def parse_time(value: str, name: str) -> float:
    """Unix seconds or RFC 3339."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_iso(value)
    except ValueError:
        raise BadRequest(f"{name} must be Unix seconds or an RFC 3339 time", field=name) from None


def parse_step(value: str) -> int:
    m = _DURATION.match(value.strip())
    if not m:
        raise BadRequest("step must be seconds or a duration such as 30s, 5m, 1h", field="step")
    ms = int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise BadRequest("step must be positive", field="step")
    return ms


def _fmt(v: float) -> str:
    """Values are strings in Prometheus answers; whole numbers without ".0"."""
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def evaluate(tsdb: TSDB, org: str, query: str, *, start: str = "", end: str = "",
             step: str = "", at: str = "", machine_ids: set[str] | None = None) -> dict[str, Any]:
    """Evaluate for one organisation. ``machine_ids`` restricts to those machines."""
    sel = parse(query)
    series = [s for s in tsdb.select(org, sel.metric)
              if all(m.matches(s.labels) for m in sel.matchers)
              and (machine_ids is None or s.labels.get("machine_id") in machine_ids)]
    if start or end or step:
        now = time.time()
        t1 = parse_time(end, "end") if end else now
        t0 = parse_time(start, "start") if start else t1 - 3600
        if t0 > t1:
            raise BadRequest("start must be before end", field="start")
        step_ms = parse_step(step) if step else max(1000, int((t1 - t0) * 1000 / 250))
        if (t1 - t0) * 1000 / step_ms > MAX_POINTS:
            raise BadRequest(f"too many points: (end - start) / step must be at most {MAX_POINTS}",
                             field="step")
        return {"status": "success", "data": {"resultType": "matrix",
                                              "result": [r for s in series if (r := _range(tsdb, s, t0, t1, step_ms))]}}
    t = parse_time(at, "time") if at else time.time()
    result = []
    for s in series:
        hit = tsdb.last_before(s.sid, int(t * 1000), LOOKBACK_MS)
        if hit is not None:
            result.append({"metric": _metric_labels(s), "value": [hit[0] / 1000, _fmt(hit[1])]})
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def _metric_labels(s: Series) -> dict[str, str]:
    return {"__name__": s.metric, **s.labels}


def _range(tsdb: TSDB, s: Series, t0: float, t1: float, step_ms: int) -> dict[str, Any] | None:
    """Each step takes the latest sample within the lookback before it (Prometheus)."""
    start_ms, end_ms = int(t0 * 1000), int(t1 * 1000)
    samples = list(tsdb.read(s.sid, start_ms - LOOKBACK_MS, end_ms))
    if not samples:
        return None
    values = []
    i = 0
    last: tuple[int, float] | None = None
    t = start_ms
    while t <= end_ms:
        while i < len(samples) and samples[i][0] <= t:
            last = samples[i]
            i += 1
        if last is not None and last[0] >= t - LOOKBACK_MS:
            values.append([t / 1000, _fmt(last[1])])
        t += step_ms
    return {"metric": _metric_labels(s), "values": values} if values else None
