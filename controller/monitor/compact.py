"""The TSDB's background work: seal the head's finished buckets into blocks (see tsdb.py),
roll finished minutes up (1 min and 1 h buckets), roll late hours up again, and delete
what is past retention (raw samples after ``metric_retention``,
rollups after ``metric_rollup_retention``; raw samples not rolled up yet are kept).

The steps are synchronous methods of :class:`Compactor` that :func:`maintain` runs in worker
threads, a slice of series at a time with the event loop running between slices. A run's
progress is written with the rollups of each slice, so a restart resumes where it stopped."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from controller.errors import Conflict
from controller.monitor import rollup
from controller.monitor.rollup import DAY, HOUR, MINUTE
from controller.monitor.selfmetrics import SelfMetrics
from controller.monitor.tsdb import LATE_PREFIX, SEAL_DELAY_MS, TSDB, delete_before
from controller.store.base import Batch
from controller.threads import LIBC, named_pool

log = logging.getLogger(__name__)
T = TypeVar("T")

# Minutes are rolled up once they ended this long ago: samples stored later than
# tsdb.LATE_MS after their time are marked late and rolled up again (see tsdb.py).
ROLL_DELAY = 120_000
ROLL_EVERY = 300.0  # seconds between runs (queries read the raw samples after the last one)
EXPIRE_EVERY = 3600.0
# Retention looks at every series' rollups (and deletes their old ranges): ~100 series per
# agent, so half a million calls into RocksDB for 5,000 agents, ~2 s of work that holds the
# GIL in a worker thread. Done at once it starved the event loop for ~20 s, and right after
# a start it did so while every agent was reconnecting (bench/reconnect_bench.py: p50
# reconnection 29 s after "ready" instead of 10 s). So: the first run some minutes after the start, then slices of series
# with the event loop running between them.
FIRST_DELAY = 300.0
SLICE_SERIES = 2_000  # series per worker-thread call at most ...
SLICE_SAMPLES = 200_000  # ... and about this many samples read
PAUSE = 0.05  # seconds between slices at least (see _roll) ...
MAX_PAUSE = 1.0  # ... and at most
LATE_BATCH = 5_000  # late marks handled per call
PROGRESS_EVERY = 30.0  # seconds between progress lines of a long run


class Compactor:
    """One TSDB's sealing, rollups and retention. Not thread-safe: one caller at a time."""

    def __init__(self, tsdb: TSDB, retention: int, rollup_retention: int,
                 metrics: SelfMetrics | None = None,
                 clock: Callable[[], float] = time.time,
                 minute_retention: int | None = None) -> None:
        self.tsdb = tsdb
        self.retention_ms = retention * 1000
        self.rollup_retention_ms = rollup_retention * 1000
        # 1-minute rollups: as long as the hourly ones unless told otherwise, never longer
        self.minute_retention_ms = min(self.rollup_retention_ms, (
            rollup_retention if minute_retention is None else minute_retention) * 1000)
        self.clock = clock
        self.state = rollup.load_state(tsdb)
        m = metrics or SelfMetrics()
        self._samples = m.counter("overcast_tsdb_rollup_samples_total",
                                  "Raw samples read to roll series up")
        self._cpu = m.counter("overcast_tsdb_rollup_cpu_seconds_total",
                              "CPU seconds spent sealing the head, rolling series up and "
                              "expiring them")
        self._sealed = m.counter("overcast_tsdb_sealed_samples_total",
                                 "Samples of the head sealed into blocks")
        self._runs = m.counter("overcast_tsdb_rollup_runs_total", "Rollup runs finished")
        self._rerolled = m.counter("overcast_tsdb_late_hours_total",
                                   "Hours of a series rolled up again for late samples")
        m.gauge_fn("overcast_tsdb_rollup_lag_seconds",
                   "How far behind now the rollups are (seconds)",
                   lambda: {(): max(0.0, self.clock() - self.state.to / 1000) if self.state.to else 0.0})

    def _now(self) -> int:
        return int(self.clock() * 1000)

    # -- the head: agents' batches -> a block per series and bucket --------------------------
    def seal_slice(self) -> bool:
        """Seal the next slice of the head's finished buckets; False once none is left."""
        t0 = time.thread_time()
        n, done = self.tsdb.seal(self._now() - SEAL_DELAY_MS)
        self._sealed.inc(n)
        self._cpu.inc(time.thread_time() - t0)
        return not done

    # -- a run: every series from state.to up to run_to -------------------------------------
    def begin(self) -> bool:
        """Start a run unless one is in progress (a restart resumes it); False if there is
        nothing finished to roll up."""
        s = self.state
        if s.run_to:
            return True
        now = self._now()
        target = rollup.floor(now - ROLL_DELAY, MINUTE)
        head = self.tsdb.head_start()
        if head is not None:  # rollups read blocks, not the head (a read per series each)
            target = min(target, head)
        if not s.to:  # the first run: whatever raw samples retention still keeps ...
            start = rollup.floor(now - self.retention_ms, HOUR)
            if not self.tsdb.legacy:  # ... from the first hour that holds any
                first = self.tsdb.first_hour()
                if first is None:
                    return False
                start = max(start, first)
            s.to = start
        if target <= s.to:
            return False
        s.run_to, s.next_sid = target, 0
        self._save(Batch())
        return True

    def roll_slice(self) -> bool:
        """Roll up the next slice of series; False when the run is done (and recorded)."""
        t0 = time.thread_time()
        s = self.state
        sids = self.tsdb.sids_from(s.next_sid, SLICE_SERIES)
        batch = Batch()
        n = 0
        rest = False  # series left for another slice
        for i, sid in enumerate(sids):
            n += rollup.roll_series(self.tsdb, batch, sid, s.to, s.run_to, fresh=True)
            s.next_sid = sid + 1
            if n >= SLICE_SAMPLES and i + 1 < len(sids):
                rest = True
                break
        if not rest and len(sids) < SLICE_SERIES:
            s.to, s.run_to, s.next_sid = s.run_to, 0, 0
            self._runs.inc()
        self._save(batch)
        self._samples.inc(n)
        self._cpu.inc(time.thread_time() - t0)
        return bool(s.run_to)

    # -- late samples -----------------------------------------------------------------------
    def reroll_late(self) -> int:
        """Roll up again the hours that got late samples; returns the marks handled (call
        again while it returns LATE_BATCH). Only between runs: a mark is deleted in the
        batch that rolls its hour up, and only if nobody marked it again meanwhile."""
        t0 = time.thread_time()
        s = self.state
        assert not s.run_to, "late hours are rolled up between runs"
        raw_cutoff = self._now() - self.retention_ms
        marks = rollup.late_marks(self.tsdb, LATE_BATCH)
        handled = 0
        for sid, seen in marks.items():
            for _ in range(3):
                batch = Batch()
                spans: list[list[int]] = []
                for key, value in seen.items():
                    batch.delete(key)
                    batch.expect[key] = value
                    hour = rollup.mark_hour(key)
                    # hours not rolled up yet are the next run's; hours past retention have
                    # lost their raw samples (rolling them up again would lose data)
                    if hour >= s.to or hour + HOUR <= raw_cutoff:
                        continue
                    end = min(hour + rollup.REROLL_SPAN, s.to)
                    if spans and hour <= spans[-1][1]:
                        spans[-1][1] = max(spans[-1][1], end)
                    else:
                        spans.append([hour, end])
                    self._rerolled.inc()
                for a, b in spans:
                    a = self._reroll_from(sid, a, b)
                    if a < b:
                        self._samples.inc(rollup.roll_series(self.tsdb, batch, sid, a, b))
                try:
                    self.tsdb.store.write(batch)
                    break
                except Conflict:  # marked again meanwhile: read its marks again
                    seen = {k: v for k, v in self.tsdb.store.scan(f"{LATE_PREFIX}{sid:08x}/")}
            handled += len(seen)
        self._cpu.inc(time.thread_time() - t0)
        return handled

    def _reroll_from(self, sid: int, a: int, b: int) -> int:
        """Where rolling ``[a, b)`` up again starts. Rolling up replaces the minutes of its
        range with what the raw samples say, so a range that reaches before the raw samples
        retention deleted (``state.raw_from``) starts later: the minutes before the first raw
        sample left keep their buckets, and so does that sample's minute when it has one (its
        first increase was counted from a sample that is gone); the hour is summed up from
        the minutes kept and the new ones. ``b`` when no raw sample is left in the range."""
        s = self.state
        if a >= s.raw_from:
            return a
        first = next(self.tsdb.read(sid, s.raw_from, b - 1), None)
        if first is None:
            return b
        start = rollup.floor(first[0], MINUTE)
        if rollup.read_buckets(self.tsdb, sid, MINUTE, start, start + MINUTE):
            start += MINUTE
        hour = rollup.floor(start, HOUR)
        if hour < start and hour < s.minute_from:
            # the minutes of that hour before ``start`` are deleted too (1-minute rollups kept
            # for less long than raw samples): its hourly bucket stays as it is
            start = hour + HOUR
        return min(start, b)

    # -- retention --------------------------------------------------------------------------
    def begin_expiry(self) -> tuple[int, int, int]:
        """The cutoffs of a retention pass, recorded before anything is deleted: a pass a
        stop interrupts has deleted some series' samples up to them already, and rolling
        late hours up again (:meth:`_reroll_from`) and queries go by them."""
        cuts = self.cutoffs()
        self._record(*cuts)
        return cuts

    def expire_raw(self, cuts: tuple[int, int, int] | None = None) -> None:
        """Delete the raw samples past retention that are rolled up, in every series at once
        (whole hours: ``cutoffs`` gives an hour)."""
        t0 = time.thread_time()
        self.tsdb.expire((cuts if cuts is not None else self.cutoffs())[0])
        self._cpu.inc(time.thread_time() - t0)

    def expire_slice(self, sids: list[int], cuts: tuple[int, int, int] | None = None) -> None:
        """Delete, in ``sids``, rollups past their retention (before ``cuts``,
        :meth:`begin_expiry`'s, or those of now), and raw samples past retention of a store
        from before hour partitions."""
        t0 = time.thread_time()
        raw_cut, minute_cut, rollup_cut = cuts if cuts is not None else self.cutoffs()
        if self.tsdb.legacy:
            self.tsdb.expire_legacy(raw_cut, sids)
        for sid in sids:
            for res, span, cut in ((MINUTE, HOUR, minute_cut), (HOUR, DAY, rollup_cut)):
                delete_before(self.tsdb.store, rollup.chunk_prefix(res, sid),
                              rollup.chunk_key(res, sid, rollup.floor(cut, span)))
        self._cpu.inc(time.thread_time() - t0)

    def _record(self, raw_cut: int, minute_cut: int, rollup_cut: int) -> None:
        self.state.raw_from = max(self.state.raw_from, raw_cut)
        self.state.minute_from = max(self.state.minute_from, rollup.floor(minute_cut, HOUR))
        self.state.rollup_from = max(self.state.rollup_from, rollup.floor(rollup_cut, DAY))
        self._save(Batch())

    def cutoffs(self) -> tuple[int, int, int]:
        """Raw samples, 1-minute and hourly rollups are deleted before these times (ms). Raw
        samples go by whole hours (the TSDB's partitions): kept up to an hour longer."""
        now = self._now()
        raw_cut = now - self.retention_ms
        if self.state.to:
            raw_cut = min(raw_cut, self.state.to)  # never what is not rolled up yet
        return (rollup.floor(raw_cut, HOUR), now - self.minute_retention_ms,
                now - self.rollup_retention_ms)

    def _save(self, batch: Batch) -> None:
        rollup.put_state(batch, self.state)
        self.tsdb.store.write(batch)


# The compaction's work runs in one thread of its own, not in the loop's shared pool (whose
# threads also make ingest's synced writes): a run reads every sample of the last minutes
# (~30 million with 10,000 agents), and its allocations stay in that thread's one glibc arena
# instead of spreading over the pool's; what a run freed is given back afterwards. (The RSS
# rise of ~500 MiB first seen during runs with 10,000 agents came from retention's range
# tombstones: see delete_before in tsdb.py.)
_POOL = named_pool("tsdb-compact", 1)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_POOL, fn, *args)


def _release_memory() -> None:
    """Give back to the system what a run freed (glibc keeps freed memory in its arenas)."""
    trim = getattr(LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


async def run_once(c: Compactor, pause: float = PAUSE) -> None:
    """Seal the head's finished buckets, finish a run a stop interrupted, roll late hours
    up again, then a new run."""
    while await _in_thread(c.seal_slice):
        await asyncio.sleep(pause)
    if c.state.run_to:
        await _roll(c, pause, resumed=True)
    while await _in_thread(c.reroll_late) >= LATE_BATCH:
        await asyncio.sleep(pause)
    if await _in_thread(c.begin):
        await _roll(c, pause, resumed=False)
    await _in_thread(_release_memory)


async def _roll(c: Compactor, pause: float, resumed: bool) -> None:
    s = c.state
    a, b = s.to, s.run_to
    span_h = (b - a) / HOUR
    started = last = time.monotonic()
    loud = span_h > 1 or resumed
    if loud:
        log.info("rolling up %.1f h of samples (%s to %s UTC)%s", span_h, _utc(a), _utc(b),
                 f", resuming at series {s.next_sid}" if resumed and s.next_sid else "")
    t0 = time.monotonic()
    while await _in_thread(c.roll_slice):
        now = time.monotonic()
        if loud and now - last > PROGRESS_EVERY:
            last = now
            log.info("rolling up: at series %d of %d", s.next_sid, c.tsdb.last_sid())
        # as long a pause as the slice took (at least ``pause``): a run holds the GIL for
        # at most half the time, so the event loop (ten thousand agents' streams) keeps up
        await asyncio.sleep(max(pause, min(now - t0, MAX_PAUSE)) if pause else 0)
        t0 = time.monotonic()
    (log.info if loud else log.debug)("rolled up to %s UTC in %.1f s", _utc(b),
                                      time.monotonic() - started)


async def expire_all(c: Compactor, slice_size: int = SLICE_SERIES, pause: float = PAUSE) -> None:
    cuts = await _in_thread(c.begin_expiry)
    await _in_thread(c.expire_raw, cuts)
    sids = await _in_thread(c.tsdb.sids)
    for i in range(0, len(sids), slice_size):
        await _in_thread(c.expire_slice, sids[i:i + slice_size], cuts)
        await asyncio.sleep(pause)
    if c.tsdb.legacy and not await _in_thread(c.tsdb.check_legacy):
        log.info("the last raw samples stored before hour partitions are past retention")
    await _in_thread(_release_memory)
    log.debug("retention: trimmed %d series", len(sids))


async def maintain(c: Compactor, first_delay: float = FIRST_DELAY,
                   every: float = ROLL_EVERY) -> None:
    """The background task: a run every ``every`` seconds, retention every hour."""
    await asyncio.sleep(first_delay)
    last_expiry = 0.0
    while True:
        try:
            await run_once(c)
            if time.monotonic() - last_expiry >= EXPIRE_EVERY or not last_expiry:
                last_expiry = time.monotonic()
                await expire_all(c)
        except Exception:
            log.exception("TSDB compaction failed (it is tried again in %.0f s)", every)
        await asyncio.sleep(every)


def _utc(t_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t_ms / 1000))
