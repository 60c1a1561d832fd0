"""Rolled-up series: every series summed up in 1-minute and 1-hour buckets (count, min, max,
sum, and the counter increase), made from the raw samples by the compaction task
(:mod:`controller.monitor.compact`) and read by queries over long spans.

Keys: ``ts1m/<sid>/<minute_ms>`` holds minutes of one hour from that minute on (a piece: the
usual run adds one with its new minutes, so it writes ~200 bytes a series instead of the
hour's chunk again), ``ts1h/<sid>/<day_ms>`` the hours of one UTC day; each is 37 bytes a
bucket stored by column (index in the hour or day, count, min, max, sum, increase), so a
week of hours is 8 reads per series. (A chunk keyed by its hour, as stores before pieces
have them, is a piece too.) A bucket's *increase* is the
counter increase from the sample before it to its last sample, a reset counting from zero
(as Prometheus's ``increase`` does); summed over buckets it is the increase over their span.

Every series is rolled up before ``RollupState.to``; a run in progress (``run_to``,
``next_sid``) is recorded with the rollups it wrote, so a restart resumes it. Rolling a
range again writes the same bytes (idempotent). Samples stored late (an agent's spool after
it reconnects) leave a mark ``tslate/<sid>/<hour_ms>`` in their ingest batch, and that hour
is rolled up again (:meth:`TSDB.mark_late`)."""

from __future__ import annotations

import functools
import json
import struct
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import compress
from operator import gt
from typing import Any

from controller.monitor.tsdb import LATE_PREFIX, PREV_LOOKBACK_MS, TSDB
from controller.store.base import Batch

MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000
_PREFIX = {MINUTE: "ts1m/", HOUR: "ts1h/"}
_CHUNK = {MINUTE: HOUR, HOUR: DAY}  # the span one key holds
STATE_KEY = "meta/tsdb/rollup"
REROLL_SPAN = 2 * HOUR  # a late hour is rolled up again with the next (its first increase)

Agg = tuple[int, float, float, float, float]  # count, min, max, sum, increase


@dataclass
class RollupState:
    to: int = 0  # every series is rolled up before this time (ms, a whole minute); 0: never
    run_to: int = 0  # a run in progress rolls up to here (0: none) ...
    next_sid: int = 0  # ... and has done the series with ids below this
    raw_from: int = 0  # raw samples before this were deleted (retention)
    rollup_from: int = 0  # hourly rollups before this were deleted
    minute_from: int = 0  # 1-minute rollups before this were deleted


def load_state(tsdb: TSDB) -> RollupState:
    raw = tsdb.store.get(STATE_KEY)
    if raw is None:
        return RollupState()
    known = RollupState.__dataclass_fields__
    return RollupState(**{k: int(v) for k, v in json.loads(raw).items() if k in known})


def put_state(batch: Batch, state: RollupState) -> None:
    batch.put(STATE_KEY, json.dumps(asdict(state)).encode())


def chunk_key(res: int, sid: int, base: int) -> str:
    return f"{_PREFIX[res]}{sid:08x}/{base:012x}"


def chunk_prefix(res: int, sid: int) -> str:
    return f"{_PREFIX[res]}{sid:08x}/"


def floor(t: int, res: int) -> int:
    return t - t % res


@functools.lru_cache(maxsize=128)
def _layout(n: int) -> struct.Struct:
    """n records, by column: indexes (byte), counts (uint32), then the min, max, sum and
    increase columns (doubles): a chunk decodes in one call, columns compress well."""
    return struct.Struct(f">{n}B{n}I{4 * n}d")


def encode(records: dict[int, Agg]) -> bytes:
    idx = sorted(records)
    cols = list(zip(*(records[i] for i in idx), strict=True))
    return bytes([len(idx)]) + _layout(len(idx)).pack(*idx, *[x for col in cols for x in col])


Columns = tuple[list[int], list[int], list[float], list[float], list[float], list[float]]


def columns(raw: bytes) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...],
                                 tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(index, count, min, max, sum, increase) columns of a chunk, in index order."""
    n = raw[0]
    v = _layout(n).unpack_from(raw, 1)
    return v[:n], v[n:2 * n], v[2 * n:3 * n], v[3 * n:4 * n], v[4 * n:5 * n], v[5 * n:]


def decode(raw: bytes) -> dict[int, Agg]:
    idx, count, mn, mx, sm, inc = columns(raw)
    return {i: (c, lo, hi, s, ic) for i, c, lo, hi, s, ic in zip(idx, count, mn, mx, sm, inc,
                                                                   strict=True)}


def combine(aggs: Iterable[Agg]) -> Agg | None:
    n, lo, hi, total, inc = 0, float("inf"), float("-inf"), 0.0, 0.0
    for c, mn, mx, sm, ic in aggs:
        n += c
        lo = mn if mn < lo else lo
        hi = mx if mx > hi else hi
        total += sm
        inc += ic
    return (n, lo, hi, total, inc) if n else None


def bucketize(samples: Iterable[tuple[int, float]], prev: float | None,
              res: int) -> tuple[dict[int, list[float]], int]:
    """Samples in time order -> bucket start -> [count, min, max, sum, increase], and the
    last sample's time (0 without samples). ``prev`` is the value before the first sample."""
    out: dict[int, list[float]] = {}
    cur: list[float] | None = None
    cur_start = -1
    last_t = 0
    for t, v in samples:
        start = t - t % res
        if start != cur_start:
            cur_start = start
            cur = out[start] = [0, v, v, 0.0, 0.0]
        assert cur is not None
        cur[0] += 1
        if v < cur[1]:
            cur[1] = v
        if v > cur[2]:
            cur[2] = v
        cur[3] += v
        if prev is not None:
            cur[4] += v - prev if v >= prev else v
        prev = v
        last_t = t
    return out, last_t


def sample_before(tsdb: TSDB, sid: int, t_ms: int) -> float | None:
    """The value of the last raw sample before ``t_ms`` (up to ``PREV_LOOKBACK_MS`` before)."""
    hit = tsdb.last_before(sid, t_ms - 1, PREV_LOOKBACK_MS)
    return None if hit is None else hit[1]


def _increase(prev: float | None, values: Sequence[float]) -> float:
    """The counter increase over ``values`` from ``prev`` (a reset counts from zero): the
    sum of ``v - p`` over consecutive pairs, ``v`` alone where it fell (a reset). Computed as
    ``last - first`` plus the value before each fall, in builtins (no Python per sample)."""
    if prev is None:
        if len(values) < 2:
            return 0.0
        prev, values = values[0], values[1:]
    elif not values:
        return 0.0
    before = (prev, *values[:-1])
    return (values[-1] - prev) + sum(compress(before, map(gt, before, values)), 0.0)


def minute_columns(times: Sequence[int], values: Sequence[float], prev: float | None,
                   ) -> tuple[list[int], list[int], list[float], list[float], list[float],
                              list[float]]:
    """Raw samples in time order -> the 1-minute buckets they fill, as columns
    (bucket start, count, min, max, sum, increase); ``prev`` is the value before the first
    sample. What :func:`bucketize` gives at 1 minute, by slices with builtins: this is the
    rollups' inner loop (every series every run)."""
    out: tuple[list[int], list[int], list[float], list[float], list[float], list[float]] = (
        [], [], [], [], [], [])
    starts, count, mn, mx, sm, inc = out
    i, n = 0, len(times)
    while i < n:
        start = times[i] - times[i] % MINUTE
        j = bisect_left(times, start + MINUTE, i)
        vs = values[i:j]
        starts.append(start)
        count.append(j - i)
        mn.append(min(vs))
        mx.append(max(vs))
        sm.append(sum(vs, 0.0))
        inc.append(_increase(prev, vs))
        prev = vs[-1]
        i = j
    return out


def roll_series(tsdb: TSDB, batch: Batch, sid: int, a: int, b: int, fresh: bool = False) -> int:
    """Put into ``batch`` the 1-minute buckets of ``sid`` in [a, b) (whole minutes) and the
    1-hour buckets of the hours that are complete at ``b``; returns the samples read.

    An hour's minutes are stored in pieces: the usual run (every few minutes) adds a piece
    with its new minutes, keyed by the first of them, and reads nothing stored unless an hour
    completes (its hourly bucket sums all of the hour's minutes). ``fresh`` says nothing is
    stored from ``a`` on (the compaction task's runs know it); otherwise the pieces in the
    range's hours are read, and an hour whose stored minutes reach into [a, b) (late samples
    rolled up again) is rewritten as one piece with those minutes replaced. Rolling a range
    again puts the same bytes; the same minutes rolled up by one run or by many are the same
    buckets (in one piece or several)."""
    store = tsdb.store
    prev, times, values = tsdb.read_after(sid, a, b - 1)
    starts, count, mn, mx, sm, inc = minute_columns(times, values, prev)
    first_hour, last_hour = floor(a, HOUR), floor(b - 1, HOUR)
    # the pieces to read: all in the range's hours, or (fresh) those of a's hour before a,
    # when that hour completes in this run
    if not fresh:
        read_to = last_hour
    elif first_hour < a and first_hour + HOUR <= b:
        read_to = first_hour
    else:
        read_to = -1
    stored: dict[int, list[tuple[bytes, bytes]]] = {}
    if read_to >= 0:
        keys, raws = store.scan_range(chunk_prefix(MINUTE, sid),
                                      chunk_key(MINUTE, sid, first_hour),
                                      chunk_key(MINUTE, sid, read_to + HOUR - 1))
        for piece_key, raw in zip(keys, raws, strict=True):
            stored.setdefault(floor(int(piece_key[-12:], 16), HOUR), []).append((piece_key, raw))
    hours: dict[int, Agg | None] = {}
    for hour in sorted(stored.keys() | {start - start % HOUR for start in starts}):
        k = bisect_left(starts, hour)
        k_end = bisect_left(starts, hour + HOUR, k)
        new: Sequence[Sequence[Any]] = (
            [(s - hour) // MINUTE for s in starts[k:k_end]], count[k:k_end], mn[k:k_end],
            mx[k:k_end], sm[k:k_end], inc[k:k_end])
        cols: Sequence[Sequence[Any]] = new  # the hour's minutes, all of them
        piece: Sequence[Sequence[Any]] | None = new if new[0] else None  # what to write
        pieces = stored.get(hour)
        if pieces:
            old = _join([columns(raw) for _, raw in pieces])
            if old[0] and hour + old[0][-1] * MINUTE >= a:  # stored minutes in [a, b)
                cols = piece = _replace_minutes(old, hour, a, b, new)
                keep = chunk_key(MINUTE, sid, hour + cols[0][0] * MINUTE).encode() \
                    if cols[0] else b""
                for stale, _ in pieces:
                    if stale != keep:
                        batch.delete(stale.decode())
                if not cols[0]:
                    piece = None
            else:  # every stored minute is before a
                cols = [(*was, *add) for was, add in zip(old, new, strict=True)]
        if piece is not None:
            batch.put(chunk_key(MINUTE, sid, hour + piece[0][0] * MINUTE),
                      _encode_columns(piece))
        if a < hour + HOUR <= b:  # complete now, and changed
            hours[hour] = (sum(cols[1]), min(cols[2]), max(cols[3]), sum(cols[4], 0.0),
                           sum(cols[5], 0.0)) if cols[0] else None
    by_day: dict[int, dict[int, Agg | None]] = {}
    for hour, agg in hours.items():
        by_day.setdefault(floor(hour, DAY), {})[(hour % DAY) // HOUR] = agg
    for day, changes in by_day.items():
        key = chunk_key(HOUR, sid, day)
        stored_day = store.get(key)
        day_records = decode(stored_day) if stored_day is not None else {}
        for i, change in changes.items():
            if change is None:
                day_records.pop(i, None)
            else:
                day_records[i] = change
        if day_records:
            batch.put(key, encode(day_records))
        elif stored_day is not None:
            batch.delete(key)
    return len(times)


def _replace_minutes(cols: Sequence[Sequence[Any]], hour: int, a: int, b: int,
                     new: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    """A chunk's columns with its minutes in [a, b) replaced by ``new``'s."""
    records = {i: r for i, *r in zip(*cols, strict=True) if not a <= hour + i * MINUTE < b}
    records.update({i: r for i, *r in zip(*new, strict=True)})
    idx = sorted(records)
    return (idx, *(list(col) for col in zip(*(records[i] for i in idx), strict=True))) \
        if idx else ([], [], [], [], [], [])


def _join(chunks: Sequence[Sequence[Sequence[Any]]]) -> Sequence[Sequence[Any]]:
    """The columns of an hour's pieces (in key order, so in minute order) as one."""
    if len(chunks) == 1:
        return chunks[0]
    return [[x for chunk in chunks for x in chunk[i]] for i in range(6)]


def _encode_columns(cols: Sequence[Sequence[Any]]) -> bytes:
    n = len(cols[0])
    return bytes([n]) + _layout(n).pack(*cols[0], *cols[1], *cols[2], *cols[3], *cols[4],
                                        *cols[5])


def read_columns(tsdb: TSDB, sid: int, res: int, start: int, end: int) -> Columns:
    """Stored buckets of ``sid`` at ``res`` that start in [start, end), as columns: bucket
    start, count, min, max, sum, increase (what queries read: no object per bucket)."""
    span = _CHUNK[res]
    out: Columns = ([], [], [], [], [], [])
    starts, count, mn, mx, sm, inc = out
    end_key = chunk_key(res, sid, end)
    for key, raw in tsdb.store.scan(chunk_prefix(res, sid),
                                    start=chunk_key(res, sid, floor(max(start, 0), span))):
        if key >= end_key:
            break
        base = floor(int(key[-12:], 16), span)  # a piece of a chunk: indexes from its start
        idx, c, lo, hi, s, ic = columns(raw)
        n = len(idx)
        if not n:
            continue
        # bucket starts: a range when the chunk has no gaps (most do: no list to build)
        b: Sequence[int] = (range(base + idx[0] * res, base + (idx[-1] + 1) * res, res)
                            if idx[-1] - idx[0] == n - 1 else [base + i * res for i in idx])
        i = bisect_left(b, start) if b[0] < start else 0
        j = bisect_left(b, end) if b[-1] >= end else n
        if i == 0 and j == n:  # the whole chunk (all but the first and the last)
            starts += b
            count += c
            mn += lo
            mx += hi
            sm += s
            inc += ic
        elif i < j:
            starts += b[i:j]
            count += c[i:j]
            mn += lo[i:j]
            mx += hi[i:j]
            sm += s[i:j]
            inc += ic[i:j]
    return out


def read_buckets(tsdb: TSDB, sid: int, res: int, start: int, end: int) -> list[tuple[int, Agg]]:
    """Stored buckets of ``sid`` at ``res`` that start in [start, end), in time order."""
    starts, count, mn, mx, sm, inc = read_columns(tsdb, sid, res, start, end)
    return [(t, (c, lo, hi, s, ic)) for t, c, lo, hi, s, ic in
            zip(starts, count, mn, mx, sm, inc, strict=True)]


def late_marks(tsdb: TSDB, limit: int) -> dict[int, dict[str, bytes]]:
    """Up to ``limit`` late marks, by series: key -> value."""
    out: dict[int, dict[str, bytes]] = {}
    for key, value in tsdb.store.scan(LATE_PREFIX, limit=limit):
        out.setdefault(int(key.split("/")[1], 16), {})[key] = value
    return out


def mark_hour(key: str) -> int:
    return int(key.rsplit("/", 1)[1], 16)
