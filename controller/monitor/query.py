"""Datapoint queries: a PromQL subset (:mod:`controller.monitor.promql`) evaluated for one
organisation as an instant vector (at ``time``) or a range matrix (``start``..``end`` every
``step``), answering in the Prometheus shapes Mist's API returned.

For other modules (rules): :func:`instant` and :func:`range_query` take a query (text or a
parsed tree) and return typed results; :func:`evaluate` is the REST/gRPC form. They read the
store and may take a while on large queries: call them in a worker thread from the loop."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from controller.errors import BadRequest
from controller.monitor import engine
from controller.monitor.promql import Aggregate, Binary, Call, Expr, Selector, Unary, selectors
from controller.monitor.promql import parse as parse_query
from controller.monitor.rollup import load_state
from controller.monitor.source import LOOKBACK_MS, Source, choose
from controller.monitor.tsdb import TSDB
from controller.timeutil import parse_iso

__all__ = ["InstantSample", "RangeSeries", "evaluate", "instant", "parse", "parse_step",
           "parse_time", "range_query", "LOOKBACK_MS"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000, "y": 31_536_000_000, None: 1000}
MAX_POINTS = 11_000  # per series in one range answer, as Prometheus


@dataclass(frozen=True)
class InstantSample:
    labels: dict[str, str]  # with "__name__" while the metric name is kept
    value: float


@dataclass(frozen=True)
class RangeSeries:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (Unix seconds, value)


def parse(query: str) -> Expr:
    """The parsed query; BadRequest (field ``query``, with the position) if it is wrong."""
    return parse_query(query)


def instant(tsdb: TSDB, org: str, query: str | Expr, at: float, *,
            machine_ids: set[str] | None = None) -> list[InstantSample]:
    """The query's value at ``at`` (Unix seconds) for each series that has one."""
    expr = parse(query) if isinstance(query, str) else query
    t = int(at * 1000)
    out = engine.evaluate(expr, _source(tsdb, org, expr, 0, t, machine_ids), [t])
    return [InstantSample(s.labels, v) for s in _sorted(out) if (v := s.vals[0]) is not None]


def range_query(tsdb: TSDB, org: str, query: str | Expr, start: float, end: float,
                step: float, *, machine_ids: set[str] | None = None) -> list[RangeSeries]:
    """The query at ``start``, ``start + step``, ... up to ``end`` (Unix seconds)."""
    expr = parse(query) if isinstance(query, str) else query
    times, series = _range(tsdb, org, expr, start, end, step, machine_ids)
    return [RangeSeries(s.labels, [(t / 1000, v) for t, v in zip(times, s.vals, strict=True)
                                   if v is not None]) for s in series]


def _range(tsdb: TSDB, org: str, expr: Expr, start: float, end: float, step: float,
           machine_ids: set[str] | None) -> tuple[list[int], engine.Vector]:
    step_ms = int(step * 1000)
    if step_ms <= 0:
        raise BadRequest("step must be positive", field="step")
    if end < start:
        raise BadRequest("start must be before end", field="start")
    first, last = int(start * 1000), int(end * 1000)
    if (last - first) // step_ms + 1 > MAX_POINTS:
        raise BadRequest(f"too many points: (end - start) / step must be at most {MAX_POINTS}",
                         field="step")
    times = list(range(first, last + 1, step_ms))
    out = engine.evaluate(expr, _source(tsdb, org, expr, step_ms, first, machine_ids), times)
    return times, _sorted(out)


def evaluate(tsdb: TSDB, org: str, query: str, *, start: str = "", end: str = "",
             step: str = "", at: str = "", machine_ids: set[str] | None = None) -> dict[str, Any]:
    """The REST answer: ``{"status", "data": {"resultType", "result"}}``. A range when any of
    start/end/step is given (end defaults to now, start to an hour before end, step to a
    250th of the span), else an instant vector at ``at`` (default now).
    ``machine_ids`` restricts to those machines' series."""
    expr = parse(query)
    if start or end or step:
        now = time.time()
        t1 = parse_time(end, "end") if end else now
        t0 = parse_time(start, "start") if start else t1 - 3600
        if t0 > t1:
            raise BadRequest("start must be before end", field="start")
        step_s = parse_step(step) / 1000 if step else max(1.0, (t1 - t0) / 250)
        times, series = _range(tsdb, org, expr, t0, t1, step_s, machine_ids)
        seconds = [t / 1000 for t in times]
        return {"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": s.labels, "values": _values(seconds, s.vals)} for s in series]}}
    t = parse_time(at, "time") if at else time.time()
    samples = instant(tsdb, org, expr, t, machine_ids=machine_ids)
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": s.labels, "value": [t, _fmt(s.value)]} for s in samples]}}


def _values(seconds: list[float], vals: list[float | None]) -> list[tuple[float, str]]:
    """[(time, "value"), ...] of the steps that have a value (the bulk of a big answer:
    pairs as tuples, which JSON writes as arrays too)."""
    if None in vals:
        pairs = [(t, v) for t, v in zip(seconds, vals, strict=True) if v is not None]
        seconds = [t for t, _ in pairs]
        present = [v for _, v in pairs]
    else:
        present = vals  # type: ignore[assignment]
    if all(map(math.isfinite, present)):
        return list(zip(seconds, _texts(present), strict=True))
    return list(zip(seconds, map(_fmt, present), strict=True))


def _texts(vals: list[float]) -> list[str]:
    """Finite values as the answer's strings, as :func:`_fmt` writes each, in one call:
    orjson formats a list of doubles in C (Ryu: the shortest text that reads back as the same
    double, the digits repr() gives) ~20x faster than repr() one at a time, which was half of
    a week-long answer's time (bench/tsdb_bench.py: 168,000 values, ~65 ms of repr)."""
    if not vals:
        return []
    body = orjson.dumps(vals)[1:-1] + b","  # b"1.0,0.5,2.0," (every value ends with ",")
    return body.replace(b".0,", b",").decode()[:-1].split(",")


def resolution(tsdb: TSDB, query: str | Expr, step: float, start: float) -> int:
    """The resolution a query reads (ms: 0 raw, 60,000 or 3,600,000), for tests and tools."""
    expr = parse(query) if isinstance(query, str) else query
    return choose(load_state(tsdb), int(step * 1000), _windows(expr), int(start * 1000))


def _source(tsdb: TSDB, org: str, expr: Expr, step_ms: int, first_ms: int,
            machine_ids: set[str] | None) -> Source:
    state = load_state(tsdb)
    res = choose(state, step_ms, _windows(expr), first_ms)
    return Source(tsdb, org, res, machine_ids, state, increases=_counts_increases(expr))


def _counts_increases(expr: Expr) -> bool:
    if isinstance(expr, Call):
        return expr.func in ("rate", "irate", "increase")
    if isinstance(expr, Aggregate | Unary):
        return _counts_increases(expr.expr)
    if isinstance(expr, Binary):
        return _counts_increases(expr.lhs) or _counts_increases(expr.rhs)
    return False


def _windows(expr: Expr) -> list[int]:
    return [s.range_ms for s in selectors(expr) if isinstance(s, Selector) and s.range_ms]


def _sorted(series: engine.Vector) -> engine.Vector:
    return sorted(series, key=lambda s: sorted(s.labels.items()))


def parse_time(value: str, name: str) -> float:
    """Unix seconds or RFC 3339."""
    try:
        t = float(value)
    except ValueError:
        try:
            return parse_iso(value)
        except ValueError:
            raise BadRequest(f"{name} must be Unix seconds or an RFC 3339 time",
                             field=name) from None
    if not math.isfinite(t) or not 0 <= t < 1e11:
        raise BadRequest(f"{name} must be Unix seconds or an RFC 3339 time", field=name)
    return t


def parse_step(value: str) -> int:
    """Milliseconds of a step: seconds (5, 0.5) or a duration (30s, 5m, 1h)."""
    m = _DURATION.match(value.strip())
    if not m:
        raise BadRequest("step must be seconds or a duration such as 30s, 5m, 1h", field="step")
    ms = int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise BadRequest("step must be positive", field="step")
    return ms


def _fmt(v: float) -> str:
    """Values are strings in Prometheus answers: the shortest text that reads back as the
    same double (orjson's, as repr's digits; 0.00001 and 1e+16 where repr writes 1e-05 and
    1e+16), whole numbers without ".0"; NaN, +Inf, -Inf."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    s = orjson.dumps(float(v)).decode()
    return s[:-2] if s.endswith(".0") else s

