"""What the evaluator reads from the TSDB, kept between rounds so that a round reads only
what is new: the series of a metric (their labels never change: looked up once, the list
refreshed every ``SERIES_REFRESH`` seconds), and per series the samples of the longest window
a rule asks for (after the first read of a window, each round reads the samples that came
since, usually one; 10,000 machines x 5 rules cost 0.8-1.0 s a round this way, against ~3 s
reading each 5-minute window again: bench/rules_bench.py). A round's reads go through one
store cursor (:class:`controller.monitor.tsdb.Reader`), which also gives a machine's other
series from the head entries read for the first.

A sample that arrives with a time before one already read (an agent's spool replayed after
a reconnect, while newer samples came meanwhile) is not seen until the series is read afresh
(about every ``FULL_EVERY`` seconds)."""

from __future__ import annotations

import json
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from controller.monitor.tsdb import TSDB, Reader

SERIES_REFRESH = 5.0     # seconds between looks for new series of a metric
FULL_EVERY = 3600.0      # seconds (plus up to 10 minutes, spread by series) after which a
                         # series' window is read again in full
EVICT_AFTER = 300.0      # seconds a series' samples are kept when no rule reads them
AHEAD_MS = 60_000        # samples stamped up to this far in the future count (clock skew)


@dataclass(frozen=True)
class SeriesRef:
    sid: int
    agent: str                     # the machine_id label: the agent that sent it
    labels: dict[str, str]


@dataclass
class _Buf:
    t: array[int] = field(default_factory=lambda: array("q"))
    v: array[float] = field(default_factory=lambda: array("d"))
    since: int = 0               # samples from here on are all in t/v
    last: int = -1               # the last sample time read
    keep_ms: int = 0             # the longest window asked for
    read_at: float = 0.0         # when the window was last read in full
    used: float = 0.0


class SeriesIndex:
    """The series of a metric, from the TSDB's index (``tsidx/<org>/<metric>/<sid>``, see
    :mod:`controller.monitor.tsdb`): listing its keys is cheap; the labels of a series are
    read once (``tsmeta/<sid>``), the first time it is listed."""

    def __init__(self, tsdb: TSDB) -> None:
        self.tsdb = tsdb
        self._series: dict[tuple[str, str], tuple[float, list[SeriesRef]]] = {}
        self._known: dict[int, SeriesRef] = {}

    def of(self, org: str, metric: str, now: float) -> list[SeriesRef]:
        """The series of ``metric`` in ``org`` (looked for every ``SERIES_REFRESH`` s)."""
        cached = self._series.get((org, metric))
        if cached is not None and now - cached[0] < SERIES_REFRESH:
            return cached[1]
        store = self.tsdb.store
        sids = [int(k.rsplit("/", 1)[1], 16)
                for k, _ in store.scan(f"tsidx/{org}/{metric}/", keys_only=True)]
        known = self._known
        new = [sid for sid in sids if sid not in known]
        for sid, raw in zip(new, store.get_many([f"tsmeta/{sid:08x}" for sid in new]), strict=True):
            if raw is not None:
                labels = json.loads(raw).get("labels") or {}
                known[sid] = SeriesRef(sid, str(labels.get("machine_id", "")), dict(labels))
        refs = [known[sid] for sid in sids if sid in known]
        self._series[(org, metric)] = (now, refs)
        return refs


class SampleCache:
    def __init__(self, tsdb: TSDB) -> None:
        self.tsdb = tsdb
        self._bufs: dict[int, _Buf] = {}
        # a round's reads go through one cursor (see TSDB's Reader): most of them find one
        # new sample or none, where making a store iterator for each cost more than the read
        self.reader = Reader(tsdb)

    def round(self) -> Reader:
        """``with cache.round():`` around a round of rules: their reads through one cursor."""
        return self.reader

    def _update(self, sid: int, start_ms: int, now: float, now_ms: int) -> _Buf:
        b = self._bufs.get(sid)
        if b is None or start_ms < b.since or now - b.read_at > FULL_EVERY + sid % 600:
            b = _Buf(since=start_ms, keep_ms=now_ms - start_ms, read_at=now)
            self._bufs[sid] = b
            first = start_ms
            self.reader.forget((sid,))  # where its samples are looked for, too
        else:
            first = b.last + 1 if b.last >= b.since else b.since
            if now_ms - start_ms > b.keep_ms:
                b.keep_ms = now_ms - start_ms
        t, v = b.t, b.v
        reader = self.reader if self.reader.cursor is not None else None
        times, values = self.tsdb.read_columns(sid, first, now_ms + AHEAD_MS, reader=reader)
        if times:
            t.extend(times)
            v.extend(values)
        if t:
            b.last = t[-1]
            cut = now_ms - b.keep_ms
            if t[0] < cut - b.keep_ms // 2:  # trim now and then, not every round
                i = bisect_left(t, cut)
                del t[:i]
                del v[:i]
                b.since = cut
        b.used = now
        return b

    def values(self, sid: int, start_ms: int, end_ms: int, now: float) -> array[float]:
        """The values of series ``sid`` with start_ms <= time <= end_ms, in time order."""
        b = self._update(sid, start_ms, now, int(now * 1000))
        t = b.t
        if not t:
            return b.v[0:0]
        lo = 0 if t[0] >= start_ms else bisect_left(t, start_ms)
        if t[-1] <= end_ms:
            return b.v[lo:] if lo else b.v
        return b.v[lo:bisect_right(t, end_ms)]

    def last_time(self, sid: int, start_ms: int, now: float) -> int | None:
        """The time of the newest sample of ``sid`` (looking back to ``start_ms``)."""
        b = self._update(sid, start_ms, now, int(now * 1000))
        return b.last if b.last >= 0 else None

    def evict(self, now: float) -> int:
        old = [sid for sid, b in self._bufs.items() if now - b.used > EVICT_AFTER]
        for sid in old:
            del self._bufs[sid]
        self.reader.forget(old)
        return len(old)

    @property
    def size(self) -> int:
        return len(self._bufs)
