"""Evaluating a parsed query at a list of times (one for an instant query, every step of a
range), as Prometheus does: an instant selector takes each series' newest point within the
lookback; a range function looks at the points in (t - range, t]; rate() and increase() on
raw samples extrapolate to the window's edges and count a drop of a counter as a reset, as
Prometheus's; on rollups they add up the buckets' increases (rates over the span they
cover). Arithmetic drops the metric name, as Prometheus does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controller.errors import Invalid
from controller.monitor.promql import (
    COMPARISONS,
    Aggregate,
    Binary,
    Call,
    Expr,
    Number,
    Selector,
    Unary,
    arithmetic,
    compare,
)
from controller.monitor.source import Points, Source

Value = float | None
Fn = Callable[["Points", "Windows", int], list[Value]]  # a range function over every window


@dataclass(slots=True)
class Series:
    labels: dict[str, str]
    vals: list[Value]  # one per evaluation time; None: no value then


Vector = list[Series]


def evaluate(expr: Expr, source: Source, times: list[int]) -> Vector:
    """``expr`` at ``times`` (ms, increasing). Raises Invalid for a query that evaluates to a
    plain number (it must select series)."""
    out = _eval(expr, source, times)
    if isinstance(out, float):
        raise Invalid("the query is a plain number: it must select series, as in "
                      "cpu_usage_idle or rate(net_bytes_sent[5m])", field="query")
    return [s for s in out if any(v is not None for v in s.vals)]


def _eval(expr: Expr, source: Source, times: list[int]) -> float | Vector:
    if isinstance(expr, Number):
        return expr.value
    if isinstance(expr, Selector):
        lookback = source.lookback_ms
        out = []
        for s in source.series(expr):
            p = source.points(s.sid, times[0] - lookback, times[-1])
            source.budget.take(len(times))  # the points this series is evaluated at
            out.append(Series({"__name__": s.metric, **s.labels}, _latest(p, times, lookback)))
        return out
    if isinstance(expr, Call):
        sel = expr.arg
        assert sel.range_ms is not None
        fn = _RAW[expr.func] if source.res == 0 else _ROLLED[expr.func]
        out = []
        for s in source.series(sel):
            p = source.points(s.sid, times[0] - sel.range_ms, times[-1])
            source.budget.take(len(times))
            out.append(Series(dict(s.labels), fn(p, _windows(p.ts, times, sel.range_ms),
                                                 sel.range_ms)))
        return out
    if isinstance(expr, Aggregate):
        inner = _eval(expr.expr, source, times)
        assert not isinstance(inner, float)
        return _aggregate(expr, inner, len(times), source.budget.check)
    if isinstance(expr, Unary):
        inner = _eval(expr.expr, source, times)
        assert not isinstance(inner, float)
        return [Series(_unnamed(s.labels), [None if v is None else -v for v in s.vals])
                for s in inner]
    assert isinstance(expr, Binary)
    lhs, rhs = _eval(expr.lhs, source, times), _eval(expr.rhs, source, times)
    if isinstance(lhs, float) and isinstance(rhs, float):  # folded by the parser already
        return arithmetic(expr.op, lhs, rhs)
    return _binary(expr, lhs, rhs)


def _binary(expr: Binary, lhs: float | Vector, rhs: float | Vector) -> Vector:
    vector_left = not isinstance(lhs, float)
    vec = lhs if vector_left else rhs
    num = rhs if vector_left else lhs
    assert not isinstance(vec, float) and isinstance(num, float)
    op = expr.op
    out = []
    for s in vec:
        vals: list[Value] = []
        for v in s.vals:
            if v is None:
                vals.append(None)
                continue
            a, b = (v, num) if vector_left else (num, v)
            if op in COMPARISONS:
                hit = compare(op, a, b)
                vals.append((1.0 if hit else 0.0) if expr.bool_mod else (v if hit else None))
            else:
                vals.append(arithmetic(op, a, b))
        keep_name = op in COMPARISONS and not expr.bool_mod
        out.append(Series(dict(s.labels) if keep_name else _unnamed(s.labels), vals))
    return out


def _aggregate(expr: Aggregate, inner: Vector, n: int, check: Callable[[], None]) -> Vector:
    groups: dict[tuple[tuple[str, str], ...], list[Series]] = {}
    for s in inner:
        if expr.without:
            drop = set(expr.labels) | {"__name__"}
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k not in drop))
        else:
            key = tuple((k, s.labels[k]) for k in sorted(set(expr.labels)) if s.labels.get(k))
        groups.setdefault(key, []).append(s)
    out = []
    reduce = _AGGREGATIONS[expr.op]
    for key, members in sorted(groups.items()):
        check()  # the query's time (a group is at most the series read x the steps)
        if len(members) == 1:  # a group of one: its own values (count: 1 where it has one)
            only = members[0].vals
            vals: list[Value] = (list(only) if expr.op != "count" else
                                 [None if v is None else 1.0 for v in only])
        else:
            vals = []
            for i in range(n):
                present = [v for s in members if (v := s.vals[i]) is not None]
                vals.append(reduce(present) if present else None)
        out.append(Series(dict(key), vals))
    return out


_AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "sum": sum,
    "avg": lambda xs: sum(xs) / len(xs),
    "min": min,
    "max": max,
    "count": lambda xs: float(len(xs)),
}


def _unnamed(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "__name__"}


def _latest(p: Points, times: list[int], lookback: int) -> list[Value]:
    ts, vals = p.ts, p.vals
    n = len(ts)
    out: list[Value] = []
    j = 0
    for t in times:
        while j < n and ts[j] <= t:
            j += 1
        out.append(vals[j - 1] if j and ts[j - 1] > t - lookback else None)
    return out


Windows = list[tuple[int, int, int]]


def _windows(ts: list[int], times: list[int], width: int) -> Windows:
    """(t, lo, hi) for each time: the points ts[lo:hi] are in (t - width, t]."""
    n = len(ts)
    lo = hi = 0
    out = []
    for t in times:
        while hi < n and ts[hi] <= t:
            hi += 1
        while lo < hi and ts[lo] <= t - width:
            lo += 1
        out.append((t, lo, hi))
    return out


def _each(fn: Callable[[Points, int, int, int, int], Value]) -> Fn:
    """A function of one window made a function of all of them."""
    def over(p: Points, wins: Windows, width: int) -> list[Value]:
        return [fn(p, lo, hi, t, width) if hi > lo else None for t, lo, hi in wins]
    return over


def _reduce(column: str, reduce: Callable[[list[float]], float]) -> Fn:
    """``reduce`` of one column's values in each window (a builtin: no call per point)."""
    def over(p: Points, wins: Windows, width: int) -> list[Value]:
        col = getattr(p, column)
        return [reduce(col[lo:hi]) if hi > lo else None for _, lo, hi in wins]
    return over


def _raw_avg(p: Points, wins: Windows, width: int) -> list[Value]:
    v = p.vals
    return [sum(v[lo:hi]) / (hi - lo) if hi > lo else None for _, lo, hi in wins]


def _raw_count(p: Points, wins: Windows, width: int) -> list[Value]:
    return [float(hi - lo) if hi > lo else None for _, lo, hi in wins]


def _rolled_avg(p: Points, wins: Windows, width: int) -> list[Value]:
    sm, ct = p.sm, p.count
    assert sm is not None and ct is not None
    return [sum(sm[lo:hi]) / sum(ct[lo:hi]) if hi > lo else None for _, lo, hi in wins]


def _rolled_count(p: Points, wins: Windows, width: int) -> list[Value]:
    ct = p.count
    assert ct is not None
    return [float(sum(ct[lo:hi])) if hi > lo else None for _, lo, hi in wins]


# -- raw samples -----------------------------------------------------------------------------

def _extrapolated(p: Points, lo: int, hi: int, t: int, width: int, counter: bool,
                  per_second: bool) -> Value:
    """Prometheus's increase/rate: the change between the first and last samples in the
    window (a counter's drops taken as resets), extrapolated towards the window's edges."""
    if hi - lo < 2:
        return None
    ts, vs = p.ts, p.vals
    first_t, last_t, first_v = ts[lo], ts[hi - 1], vs[lo]
    result = vs[hi - 1] - first_v
    if counter:
        prev = first_v
        for i in range(lo + 1, hi):
            v = vs[i]
            if v < prev:
                result += prev
            prev = v
    sampled = (last_t - first_t) / 1000
    to_start = (first_t - (t - width)) / 1000
    to_end = (t - last_t) / 1000
    average = sampled / (hi - lo - 1)
    # up to 1.1 sample intervals from an edge: the series reaches it; else half an interval
    threshold = average * 1.1
    if to_start >= threshold:
        to_start = average / 2
    if to_end >= threshold:
        to_end = average / 2
    if counter and result > 0 and first_v >= 0:
        # a counter does not extrapolate below zero
        to_start = min(to_start, sampled * (first_v / result))
    result *= (sampled + to_start + to_end) / sampled
    return result / (width / 1000) if per_second else result


def _raw_irate(p: Points, lo: int, hi: int, t: int, width: int) -> Value:
    if hi - lo < 2:
        return None
    prev, last = p.vals[hi - 2], p.vals[hi - 1]
    seconds = (p.ts[hi - 1] - p.ts[hi - 2]) / 1000
    return (last if last < prev else last - prev) / seconds if seconds > 0 else None


_RAW: dict[str, Fn] = {
    "rate": _each(lambda p, lo, hi, t, w: _extrapolated(p, lo, hi, t, w, True, True)),
    "increase": _each(lambda p, lo, hi, t, w: _extrapolated(p, lo, hi, t, w, True, False)),
    "irate": _each(_raw_irate),
    "avg_over_time": _raw_avg,
    "min_over_time": _reduce("vals", min),
    "max_over_time": _reduce("vals", max),
    "sum_over_time": _reduce("vals", sum),
    "count_over_time": _raw_count,
}


# -- rollups ---------------------------------------------------------------------------------

def _rolled_rate(p: Points, lo: int, hi: int, t: int, width: int, per_second: bool) -> Value:
    """The buckets' increases over the span they cover; increase() scales it to the window."""
    assert p.inc is not None and p.starts is not None
    seconds = (p.ts[hi - 1] - p.starts[lo]) / 1000
    if seconds <= 0:
        return None
    rate = sum(p.inc[lo:hi]) / seconds
    return rate if per_second else rate * width / 1000


def _rolled_irate(p: Points, lo: int, hi: int, t: int, width: int) -> Value:
    assert p.inc is not None and p.starts is not None
    seconds = (p.ts[hi - 1] - p.starts[hi - 1]) / 1000
    return p.inc[hi - 1] / seconds if seconds > 0 else None


_ROLLED: dict[str, Fn] = {
    "rate": _each(lambda p, lo, hi, t, w: _rolled_rate(p, lo, hi, t, w, True)),
    "increase": _each(lambda p, lo, hi, t, w: _rolled_rate(p, lo, hi, t, w, False)),
    "irate": _each(_rolled_irate),
    "avg_over_time": _rolled_avg,
    "min_over_time": _reduce("mn", min),
    "max_over_time": _reduce("mx", max),
    "sum_over_time": _reduce("sm", sum),
    "count_over_time": _rolled_count,
}
