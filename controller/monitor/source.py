"""Where a query reads its samples: the raw samples, or the 1-minute or 1-hour rollups, one
resolution for the whole query (:func:`choose`). Rollups cover time up to where the
compaction task has got to; after it, buckets are made from the raw samples on the fly, so a
rolled-up answer reaches the newest sample."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import truediv

from controller.errors import Invalid
from controller.monitor.promql import Selector
from controller.monitor.rollup import (
    HOUR,
    MINUTE,
    Agg,
    RollupState,
    bucketize,
    combine,
    floor,
    load_state,
    read_columns,
    sample_before,
)
from controller.monitor.tsdb import TSDB, Series

RAW = 0
LOOKBACK_MS = 5 * 60 * 1000  # as Prometheus: a sample counts for 5 minutes after it
MAX_SERIES = 50_000  # one selector's series; more is refused (narrow it with matchers)
_NARROW = ("narrow it with label matchers (fewer series), a shorter span, or a longer step "
           "(steps and range windows of 1m or more read 1-minute rollups, of 1h or more "
           "hourly ones)")


class Budget:
    """What one query may use, as Prometheus's ``query.max-samples`` and ``query.timeout``:
    samples (raw samples and rollup buckets read, and the points each series is evaluated
    at) and time. The reads run in a worker thread nothing can cancel: they stop themselves,
    with Invalid (422) naming the limit, the setting and how to narrow the query."""

    def __init__(self, max_samples: int, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_samples = max_samples
        self.left = max_samples
        self.timeout = timeout
        self.clock = clock
        self.deadline = clock() + timeout

    def take(self, n: int) -> None:
        """Count ``n`` samples (raises past the budget) and look at the clock."""
        self.left -= n
        if self.left < 0:
            raise Invalid(f"the query needs more than {self.max_samples:,} samples (samples "
                          f"read and points computed; the limit is query_max_samples): "
                          f"{_NARROW}", field="query", limit="query_max_samples")
        self.check()

    def check(self) -> None:
        if self.clock() > self.deadline:
            raise Invalid(f"the query took longer than {self.timeout:g} s (the limit is "
                          f"query_timeout): {_NARROW}", field="query", limit="query_timeout")


@dataclass(slots=True)
class Points:
    """One series' points in time order. Raw: ``vals`` are the samples. Rolled up: each
    point is a bucket counted at ``ts`` (its end, or its newest sample for the newest
    bucket), ``vals`` its average, and the other lists its aggregates."""

    ts: list[int]
    vals: list[float]
    starts: list[int] | None = None
    count: list[int] | None = None
    mn: list[float] | None = None
    mx: list[float] | None = None
    sm: list[float] | None = None
    inc: list[float] | None = None


def choose(state: RollupState, step_ms: int, windows: list[int], first_ms: int) -> int:
    """The coarsest resolution no coarser than the step and the shortest range window; raw
    samples where they are kept (instant queries have no step: raw), else 1-minute buckets."""
    shortest = min(windows) if windows else None
    reach = first_ms - (max(windows) if windows else LOOKBACK_MS)  # the oldest time read
    for res in (HOUR, MINUTE):
        if step_ms >= res and (shortest is None or shortest >= res):
            break
    else:
        res = RAW
    if res == RAW and reach < state.raw_from:
        res = MINUTE
    if res == MINUTE and reach < state.minute_from:
        res = HOUR  # 1-minute rollups are kept for less long: older spans have hours only
    return res


class Source:
    """Series and points of one organisation at one resolution."""

    def __init__(self, tsdb: TSDB, org: str, res: int, machine_ids: set[str] | None = None,
                 state: RollupState | None = None, max_series: int | None = None,
                 increases: bool = True, budget: Budget | None = None) -> None:
        self.tsdb = tsdb
        self.org = org
        self.res = res
        self.machine_ids = machine_ids
        self.state = state if state is not None else load_state(tsdb)
        self.max_series = MAX_SERIES if max_series is None else max_series
        self.increases = increases  # a counter's increase is read (rate, irate, increase)
        self.budget = budget if budget is not None else Budget(tsdb.query_max_samples,
                                                               tsdb.query_timeout)

    @property
    def lookback_ms(self) -> int:
        return max(LOOKBACK_MS, self.res)

    def series(self, sel: Selector) -> list[Series]:
        out = []
        self.budget.check()
        for s in self.tsdb.select(self.org, sel.metric):
            labels = {"__name__": s.metric, **s.labels}
            if all(m.matches(labels.get(m.label, "")) for m in sel.matchers) and (
                    self.machine_ids is None or s.labels.get("machine_id") in self.machine_ids):
                out.append(s)
                if len(out) > self.max_series:
                    raise Invalid(f"{sel.metric} selects more than {self.max_series} series: "
                                  "narrow it with label matchers", field="query")
        return out

    def points(self, sid: int, start: int, end: int) -> Points:
        """The points counted in (start, end]. Counts them against the query's budget
        (Invalid past it, or past its time)."""
        budget = self.budget
        if self.res == RAW:
            # one more than the budget allows: reading stops there, and take() raises
            ts, vals = self.tsdb.read_columns(sid, start + 1, end, limit=max(0, budget.left) + 1)
            budget.take(len(ts))
            return Points(ts, vals)
        res, wm = self.res, self.state.to
        stored_end = wm if res == MINUTE else floor(wm, HOUR)
        first = start - res + 1  # the earliest bucket start counted after ``start``
        starts, count, mn, mx, sm, inc = read_columns(self.tsdb, sid, res, first,
                                                      min(end - res + 1, stored_end))
        budget.take(len(starts))
        stamps = [b + res for b in starts]
        if end >= stored_end:
            for b, stamp, (n, lo, hi, total, ic) in self._tail(sid, first, end, stored_end):
                if start < stamp <= end:
                    starts.append(b)
                    stamps.append(stamp)
                    count.append(n)
                    mn.append(lo)
                    mx.append(hi)
                    sm.append(total)
                    inc.append(ic)
        return Points(stamps, list(map(truediv, sm, count)), starts, count, mn, mx, sm, inc)

    def _tail(self, sid: int, first: int, end: int, stored_end: int) -> list[tuple[int, int, Agg]]:
        """(bucket start, time counted, aggregate) of the buckets after the stored ones, made
        from finer data: the stored minutes of the hour the rollups are in (for hours), then
        the raw samples."""
        res, wm = self.res, self.state.to
        tail_from = max(stored_end, floor(max(first, 0), res))
        parts: dict[int, list[Agg]] = {}
        newest = 0
        if res == HOUR and wm > tail_from:  # all in the one hour that holds ``wm``
            starts, count, mn, mx, sm, inc = read_columns(self.tsdb, sid, MINUTE, tail_from, wm)
            self.budget.take(len(starts))
            if starts:
                parts[floor(starts[0], HOUR)] = [(sum(count), min(mn), max(mx), sum(sm), sum(inc))]
                newest = starts[-1] + MINUTE
        raw_from = max(wm, tail_from)
        ts, vals = self.tsdb.read_columns(sid, raw_from, end, limit=max(0, self.budget.left) + 1)
        self.budget.take(len(ts))
        prev = sample_before(self.tsdb, sid, raw_from) if ts and self.increases else None
        buckets, last_t = bucketize(zip(ts, vals, strict=True), prev, res)
        for b, x in buckets.items():
            parts.setdefault(b, []).append((int(x[0]), x[1], x[2], x[3], x[4]))
        tail = []
        for b in sorted(parts):
            agg = combine(parts[b])
            if agg is not None:
                tail.append((b, b + res, agg))
        if tail:  # the newest bucket counts from its newest sample on
            b, stamp, agg = tail[-1]
            tail[-1] = (b, min(stamp, last_t or newest), agg)
        return tail
