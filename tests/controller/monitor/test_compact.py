"""Rollups on a real store: 1-minute and 1-hour buckets exactly what the samples say
(counter increases across a reset too), queries over them, the newest minutes made from raw
samples on the fly, a run interrupted and resumed giving the same bytes as one that was not,
rolling up again changing nothing, late samples rolled up again, and retention."""

from __future__ import annotations

import asyncio
import logging
from array import array
from pathlib import Path

import pytest

from controller.agents.ingest import Compact, Ingestor
from controller.monitor import compact, engine, rollup
from controller.monitor.compact import Compactor, expire_all, run_once
from controller.monitor.promql import parse
from controller.monitor.query import range_query, resolution
from controller.monitor.rollup import DAY, HOUR, MINUTE
from controller.monitor.source import RAW, Source
from controller.monitor.tsdb import TSDB, sample_key, series_part_prefix
from controller.store import Batch, open_store

T0 = 1_699_999_200_000  # 2023-11-14 22:00 UTC, a whole hour (ms)
N = 720  # two hours of samples every 10 s
RESET = 500  # the counter restarts from 0 at this sample


class Clock:
    def __init__(self, t_ms: int) -> None:
        self.t_ms = t_ms

    def __call__(self) -> float:
        return self.t_ms / 1000


def counter(i: int) -> float:
    return float(i if i < RESET else i - RESET)


def gauge(i: int) -> float:
    return float(i % 7)


def fill(db: TSDB, org: str = "o1", n: int = N, start: int = 0) -> None:
    b = Batch()
    for i in range(start, start + n):
        t = T0 + i * 10_000
        db.add(b, org, [("c", {"machine_id": "m1"}, counter(i), t),
                        ("g", {"machine_id": "m1"}, gauge(i), t),
                        ("g", {"machine_id": "m2"}, 2 * gauge(i), t)])
    db.store.write(b)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 3 * HOUR + 5 * MINUTE)


@pytest.fixture
def db(tmp_path: Path) -> TSDB:
    d = TSDB(open_store(tmp_path / "db"))
    fill(d)
    return d


def cut_mid_hour(db: TSDB, c: Compactor, t: int) -> None:
    """Raw samples deleted before ``t`` in the middle of an hour, and recorded: what retention
    did by minutes before the TSDB kept raw samples by hours (a store from then)."""
    for s in db.sids():
        db.store.delete_range(series_part_prefix(s, t // HOUR), sample_key(s, t))
    c.state.raw_from = t
    c._save(Batch())  # noqa: SLF001


def compactor(db: TSDB, clock: Clock, retention: int = 86_400,
              rollup_retention: int = 30 * 86_400) -> Compactor:
    return Compactor(db, retention, rollup_retention, clock=clock)


def oracle(values: list[tuple[int, float]], res: int) -> dict[int, tuple[int, float, float, float, float]]:
    """Buckets computed the plain way: count, min, max, sum, and the counter increase from
    the sample before (a drop counts from zero)."""
    out: dict[int, list[float]] = {}
    prev = None
    for t, v in values:
        b = out.setdefault(t - t % res, [])
        b.append(v)
        b.append((v - prev if v >= prev else v) if prev is not None else 0.0)
        prev = v
    return {k: (len(x) // 2, min(x[0::2]), max(x[0::2]), sum(x[0::2]), sum(x[1::2]))
            for k, x in out.items()}


def sid(db: TSDB, metric: str, machine: str = "m1") -> int:
    (s,) = [s for s in db.select("o1", metric) if s.labels["machine_id"] == machine]
    return s.sid


def stored(db: TSDB) -> dict[str, bytes]:
    return {k: v for p in ("ts1m/", "ts1h/") for k, v in db.store.scan(p)}


def test_buckets_are_exactly_what_the_samples_say(db: TSDB, clock: Clock) -> None:
    c = compactor(db, clock)
    asyncio.run(run_once(c, pause=0))
    assert c.state.to == T0 + 3 * HOUR + 3 * MINUTE and not c.state.run_to
    for metric, fn in (("c", counter), ("g", gauge)):
        samples = [(T0 + i * 10_000, fn(i)) for i in range(N)]
        for res in (MINUTE, HOUR):
            got = dict(rollup.read_buckets(db, sid(db, metric), res, T0 - DAY, T0 + DAY))
            assert got == oracle(samples, res), (metric, res)
    minutes = dict(rollup.read_buckets(db, sid(db, "c"), MINUTE, T0, T0 + 2 * HOUR))
    assert minutes[T0] == (6, 0.0, 5.0, 15.0, 5.0)  # the very first sample has no increase
    assert minutes[T0 + MINUTE] == (6, 6.0, 11.0, 51.0, 6.0)
    # samples 498..503: 498, 499, then the restart 0, 1, 2, 3: 1 + 1 + 0 + 1 + 1 + 1
    assert minutes[T0 + 83 * MINUTE] == (6, 0.0, 499.0, 1003.0, 5.0)
    hours = dict(rollup.read_buckets(db, sid(db, "c"), HOUR, T0, T0 + 2 * HOUR))
    assert hours[T0 + HOUR] == (360, 0.0, 499.0, sum(range(360, 500)) + sum(range(0, 220)),
                                140.0 + 219.0)
    # one key per series and hour (minutes), per series and day (hours)
    assert len(stored(db)) == 3 * (2 + 1)


def test_runs_every_five_minutes_store_what_one_run_does(db: TSDB, clock: Clock,
                                                        tmp_path: Path) -> None:
    """The usual run adds its minutes to the hour as a piece of their own (and sums the hour
    up from its pieces when it completes): the same buckets as one run over the whole span
    (the same hourly bytes), and buckets that match the samples, a counter reset included."""
    steps = Clock(T0 + compact.ROLL_DELAY)
    c = compactor(db, steps)
    c.state.to = T0
    runs = 0
    while steps.t_ms < clock.t_ms:
        steps.t_ms += 5 * MINUTE
        asyncio.run(run_once(c, pause=0))
        runs += 1
    assert runs > 30 and c.state.to >= T0 + 2 * HOUR
    whole = TSDB(open_store(tmp_path / "whole"))
    fill(whole)
    one = compactor(whole, Clock(steps.t_ms))
    one.state.to = T0
    asyncio.run(run_once(one, pause=0))
    assert one.state.to == c.state.to
    for s in db.sids():
        for res in (MINUTE, HOUR):
            assert rollup.read_buckets(db, s, res, 0, T0 + DAY) == rollup.read_buckets(
                whole, s, res, 0, T0 + DAY)
    hourly = {k: v for k, v in stored(db).items() if k.startswith("ts1h/")}
    assert hourly == {k: v for k, v in stored(whole).items() if k.startswith("ts1h/")}
    # a piece per run with minutes, each keyed by its first minute; one per hour in one run
    pieces = {k: v for k, v in stored(db).items()
              if k.startswith(rollup.chunk_prefix(MINUTE, sid(db, "c")))}
    assert len(pieces) == len({t // (5 * MINUTE) for t, _ in rollup.read_buckets(
        db, sid(db, "c"), MINUTE, 0, T0 + DAY)}) > 12
    for key, raw in pieces.items():
        t = int(key[-12:], 16)
        assert rollup.columns(raw)[0][0] == (t % HOUR) // MINUTE
    assert len(stored(whole)) == 3 * (2 + 1)
    samples = [(T0 + i * 10_000, counter(i)) for i in range(N)]
    for res in (MINUTE, HOUR):
        got = dict(rollup.read_buckets(db, sid(db, "c"), res, T0 - DAY, T0 + DAY))
        assert got == oracle(samples, res), res


def test_a_late_sample_rewrites_its_hour_of_pieces_as_one(db: TSDB) -> None:
    """An hour rolled up by 5-minute runs is in pieces; a late sample rolls it up again as
    one piece (the others deleted), and its buckets are what the samples say."""
    steps = Clock(T0 + compact.ROLL_DELAY)
    c = compactor(db, steps)
    c.state.to = T0
    while steps.t_ms < T0 + 2 * HOUR + compact.ROLL_DELAY:
        steps.t_ms += 5 * MINUTE
        asyncio.run(run_once(c, pause=0))
    g = sid(db, "g")
    hour0 = [k for k in stored(db) if k.startswith(rollup.chunk_prefix(MINUTE, g))
             and int(k[-12:], 16) < T0 + HOUR]
    assert len(hour0) == 12
    late = T0 + 20 * MINUTE + 5_000
    b = Batch()
    db.add(b, "o1", [("g", {"machine_id": "m1"}, 1000.0, late)])
    db.store.write(b)
    c.reroll_late()
    after = [k for k in stored(db) if k.startswith(rollup.chunk_prefix(MINUTE, g))
             and int(k[-12:], 16) < T0 + HOUR]
    assert after == [rollup.chunk_key(MINUTE, g, T0)]
    samples = sorted([(T0 + i * 10_000, gauge(i)) for i in range(N)] + [(late, 1000.0)])
    for res in (MINUTE, HOUR):
        got = dict(rollup.read_buckets(db, g, res, T0, T0 + 2 * HOUR))
        assert got == oracle([x for x in samples if x[0] < T0 + 2 * HOUR], res), res


def test_the_first_run_starts_at_the_first_hour_with_samples(tmp_path: Path) -> None:
    """A store's first run rolls up from the first hour that holds samples, not from a
    retention ago (a week of hours with nothing in them, for every series); an empty store
    has nothing to roll up, and its first samples start the first run."""
    db = TSDB(open_store(tmp_path / "fresh"))
    clock = Clock(T0 + 3 * HOUR + 5 * MINUTE)
    c = Compactor(db, 7 * 86_400, 30 * 86_400, clock=clock)
    assert not c.begin() and not c.state.to
    fill(db, n=60, start=360)  # 10 minutes from T0 + 1h
    reads: list[int] = []
    read_after = db.read_after

    def counted(sid: int, a: int, b: int) -> tuple[float | None, list[int], list[float]]:
        reads.append(a)
        return read_after(sid, a, b)

    db.read_after = counted  # type: ignore[method-assign]
    assert c.begin() and c.state.to == T0 + HOUR
    while c.roll_slice():
        pass
    assert set(reads) == {T0 + HOUR} and c.state.to == T0 + 3 * HOUR + 3 * MINUTE
    assert rollup.read_buckets(db, sid(db, "c"), HOUR, T0, T0 + DAY) == [
        (T0 + HOUR, oracle([(T0 + i * 10_000, counter(i)) for i in range(360, 420)],
                           HOUR)[T0 + HOUR])]


def test_sparse_samples_one_a_minute_or_fewer_roll_up(tmp_path: Path) -> None:
    """A series sampled every 5 minutes: every minute bucket holds one sample, the first
    with no sample before it (no increase)."""
    db = TSDB(open_store(tmp_path / "sparse"))
    b = Batch()
    values = [3.0, 5.0, 1.0, 4.0]  # a reset between the 2nd and the 3rd
    db.add(b, "o1", [("c", {"machine_id": "m1"}, v, T0 + i * 5 * MINUTE)
                     for i, v in enumerate(values)])
    db.store.write(b)
    c = compactor(db, Clock(T0 + HOUR + 3 * MINUTE))
    asyncio.run(run_once(c, pause=0))
    minutes = rollup.read_buckets(db, sid(db, "c"), MINUTE, T0, T0 + HOUR)
    assert minutes == [(T0, (1, 3.0, 3.0, 3.0, 0.0)), (T0 + 5 * MINUTE, (1, 5.0, 5.0, 5.0, 2.0)),
                       (T0 + 10 * MINUTE, (1, 1.0, 1.0, 1.0, 1.0)),
                       (T0 + 15 * MINUTE, (1, 4.0, 4.0, 4.0, 3.0))]
    assert rollup.read_buckets(db, sid(db, "c"), HOUR, T0, T0 + HOUR) == [
        (T0, (4, 1.0, 5.0, 13.0, 6.0))]


def test_queries_read_rollups_by_step_and_agree_with_the_buckets(db: TSDB, clock: Clock) -> None:
    asyncio.run(run_once(compactor(db, clock), pause=0))
    start_s = (T0 + HOUR) / 1000
    assert resolution(db, "g", 3600, start_s) == HOUR
    assert resolution(db, "g", 60, start_s) == MINUTE
    assert resolution(db, "g", 10, start_s) == RAW
    assert resolution(db, "rate(c[5m])", 3600, start_s) == MINUTE  # the window is finer
    assert resolution(db, "rate(c[5m])", 0, start_s) == RAW
    q = 'sum_over_time(g{machine_id="m1"}[1h])'
    (s,) = range_query(db, "o1", q, start_s, start_s + 3600, 3600)
    hour0 = sum(gauge(i) for i in range(360))
    hour1 = sum(gauge(i) for i in range(360, 720))
    assert s.points == [(start_s, hour0), (start_s + 3600, hour1)]
    (s,) = range_query(db, "o1", "increase(c[1h])", start_s, start_s + 3600, 3600)
    assert s.points == [(start_s, 359.0), (start_s + 3600, 359.0)]
    (s,) = range_query(db, "o1", "rate(c[2h])", start_s + 3600, start_s + 3600, 3600)
    assert s.points == [(start_s + 3600, pytest.approx(718 / 7200))]
    # a plain selector over rollups: each bucket's average; an aggregation over them
    (s,) = range_query(db, "o1", "max(g)", start_s, start_s, 3600)
    assert s.points == [(start_s, pytest.approx(2 * hour0 / 360))]
    # minutes: max over 5 one-minute buckets = max over the raw samples in those minutes
    t = (T0 + 30 * MINUTE) / 1000
    (s,) = range_query(db, "o1", 'max_over_time(c[5m])', t, t, 60)
    assert s.points == [(t, counter(179))]


def test_the_newest_minutes_come_from_raw_samples(db: TSDB, clock: Clock) -> None:
    b = Batch()  # rolled up only to T0+1h30
    for s in db.sids():
        rollup.roll_series(db, b, s, T0, T0 + HOUR + 30 * MINUTE)
    rollup.put_state(b, rollup.RollupState(to=T0 + HOUR + 30 * MINUTE))
    db.store.write(b)
    for res in (MINUTE, HOUR):
        src = Source(db, "o1", res)
        p = src.points(sid(db, "g"), T0, T0 + 2 * HOUR)
        samples = [(T0 + i * 10_000, gauge(i)) for i in range(N)]
        want = oracle(samples, res)
        assert p.starts == sorted(want)
        assert [(n, s) for n, s in zip(p.count or [], p.sm or [], strict=True)] == [
            (want[b][0], want[b][3]) for b in sorted(want)]
        # the newest bucket counts from its newest sample, older ones from their ends
        assert p.ts[-1] == T0 + (N - 1) * 10_000 and p.ts[-2] == p.starts[-2] + res


def test_a_restarted_run_resumes_and_writes_the_same_bytes(db: TSDB, clock: Clock, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    plain = TSDB(open_store(tmp_path / "plain"))
    fill(plain)
    asyncio.run(run_once(compactor(plain, clock), pause=0))
    monkeypatch.setattr(compact, "SLICE_SERIES", 1)
    first = compactor(db, clock)
    assert first.begin() and first.roll_slice()  # one series of three, then the "crash"
    assert rollup.load_state(db).next_sid == 2
    again = compactor(db, clock)
    assert again.state.run_to == T0 + 3 * HOUR + 3 * MINUTE and again.state.next_sid == 2
    caplog.set_level(logging.INFO, logger="controller.monitor.compact")
    asyncio.run(run_once(again, pause=0))
    assert "resuming at series 2" in caplog.text and "rolled up to" in caplog.text
    assert stored(db) == stored(plain) and rollup.load_state(db) == rollup.load_state(plain)


def test_rolling_up_again_changes_nothing(db: TSDB, clock: Clock) -> None:
    c = compactor(db, clock)
    asyncio.run(run_once(c, pause=0))
    before = stored(db)
    b = Batch()
    for s in db.sids():
        rollup.roll_series(db, b, s, T0 - HOUR, c.state.to)
        rollup.roll_series(db, b, s, T0 + 17 * MINUTE, T0 + HOUR + 5 * MINUTE)
    assert all(before.get(k) == v for k, v in b.puts.items()) and not b.deletes
    db.store.write(b)
    assert stored(db) == before


def test_late_samples_roll_their_hour_up_again(db: TSDB, clock: Clock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    c = compactor(db, clock)
    asyncio.run(run_once(c, pause=0))
    g = sid(db, "g")
    b = Batch()  # an agent's spool: a sample between two stored ones, long after its time
    db.add(b, "o1", [("g", {"machine_id": "m1"}, 1000.0, T0 + 30 * MINUTE + 5_000)])
    db.store.write(b)
    assert [k for k, _ in db.store.scan("tslate/")] == [f"tslate/{g:08x}/{T0:012x}"]
    # while it is rolled up, the agent sends another: the mark changes, so it is kept
    real = rollup.roll_series
    calls = []

    def meanwhile(tsdb: TSDB, batch: Batch, s: int, a: int, b_: int) -> int:
        if not calls:
            more = Batch()
            db.add(more, "o1", [("g", {"machine_id": "m1"}, -5.0, T0 + 31 * MINUTE + 5_000)])
            db.store.write(more)
        calls.append((a, b_))
        return real(tsdb, batch, s, a, b_)

    monkeypatch.setattr(rollup, "roll_series", meanwhile)
    asyncio.run(run_once(c, pause=0))
    assert calls[:2] == [(T0, T0 + 2 * HOUR)] * 2  # the hour and the next, twice (a conflict)
    assert list(db.store.scan("tslate/")) == []
    minutes = dict(rollup.read_buckets(db, g, MINUTE, T0, T0 + HOUR))
    assert minutes[T0 + 30 * MINUTE][:3] == (7, 0.0, 1000.0)
    assert minutes[T0 + 31 * MINUTE][:2] == (7, -5.0)
    hours = dict(rollup.read_buckets(db, g, HOUR, T0, T0 + HOUR))
    assert hours[T0][:3] == (362, -5.0, 1000.0)


def test_late_marks_for_hours_not_rolled_up_or_past_retention_are_just_dropped(
        db: TSDB, clock: Clock) -> None:
    c = compactor(db, clock)
    asyncio.run(run_once(c, pause=0))
    before = stored(db)
    b = Batch()
    db.mark_late(b, [sid(db, "g")], c.state.to + MINUTE)  # the next run's
    db.mark_late(b, [sid(db, "g")], T0 - 2 * DAY)  # raw samples deleted already
    db.store.write(b)
    assert c.reroll_late() == 2
    assert list(db.store.scan("tslate/")) == [] and stored(db) == before


def test_a_late_hour_straddling_raw_retention_keeps_its_rolled_up_minutes(
        db: TSDB, clock: Clock) -> None:
    """Raw samples before T0+30m are deleted (retention) when a late sample for T0+45m
    comes: the hour is rolled up again from the minutes still stored before T0+30m and the
    raw samples after, so it counts all 361 samples, not only the 181 whose raw samples
    are left."""
    c = compactor(db, clock, retention=2 * 3600 + 35 * 60)  # raw cutoff: T0+30m
    asyncio.run(run_once(c, pause=0))
    asyncio.run(expire_all(c, pause=0))
    assert c.state.raw_from == T0  # whole hours only: the hour of the cutoff is kept ...
    cut_mid_hour(db, c, T0 + 30 * MINUTE)  # ... unless a store from before cut by minutes
    assert [t for t, _ in db.read(sid(db, "g"), 0, T0 + HOUR)][:1] == [T0 + 30 * MINUTE]
    before = stored(db)
    late = T0 + 45 * MINUTE + 5_000
    b = Batch()
    db.add(b, "o1", [("g", {"machine_id": "m1"}, 1000.0, late),
                     ("c", {"machine_id": "m1"}, counter(270), late)])
    db.store.write(b)
    c.reroll_late()
    assert list(db.store.scan("tslate/")) == []
    for metric, fn, extra in (("g", gauge, 1000.0), ("c", counter, counter(270))):
        samples = sorted([(T0 + i * 10_000, fn(i)) for i in range(N)] + [(late, extra)])
        for res in (MINUTE, HOUR):
            got = dict(rollup.read_buckets(db, sid(db, metric), res, T0, T0 + 2 * HOUR))
            assert got == oracle(samples, res), (metric, res)
    hours = dict(rollup.read_buckets(db, sid(db, "g"), HOUR, T0, T0 + HOUR))
    assert hours[T0][0] == 361
    # the minutes before the cutoff, and the first one with raw samples, kept as stored
    g = sid(db, "g")
    old, new = (rollup.decode(d[rollup.chunk_key(MINUTE, g, T0)]) for d in (before, stored(db)))
    assert {i: new[i] for i in range(31)} == {i: old[i] for i in range(31)} and new != old


def test_a_late_hour_whose_minutes_are_gone_too_keeps_its_hourly_bucket(
        db: TSDB, clock: Clock) -> None:
    """1-minute rollups kept for less long than raw samples: hour 0's minutes are deleted and
    its raw samples half, so it cannot be summed up again; its hourly bucket stays as it was
    (without the late sample) instead of shrinking to the half still there."""
    c = Compactor(db, 2 * 3600 + 35 * 60, 30 * 86_400, clock=clock, minute_retention=7200)
    asyncio.run(run_once(c, pause=0))
    asyncio.run(expire_all(c, pause=0))
    cut_mid_hour(db, c, T0 + 30 * MINUTE)
    g = sid(db, "g")
    assert c.state.raw_from == T0 + 30 * MINUTE and c.state.minute_from == T0 + HOUR
    hour0 = dict(rollup.read_buckets(db, g, HOUR, T0, T0 + HOUR))[T0]
    assert hour0[0] == 360
    b = Batch()
    db.add(b, "o1", [("g", {"machine_id": "m1"}, 1000.0, T0 + 45 * MINUTE + 5_000)])
    db.store.write(b)
    c.reroll_late()
    assert list(db.store.scan("tslate/")) == []
    hours = dict(rollup.read_buckets(db, g, HOUR, T0, T0 + 2 * HOUR))
    assert hours[T0] == hour0
    samples = [(T0 + i * 10_000, gauge(i)) for i in range(N)]
    assert hours[T0 + HOUR] == oracle(samples, HOUR)[T0 + HOUR]


async def test_late_compact_batches_leave_a_mark(db: TSDB) -> None:
    ing = Ingestor(db.store, db, max_delay=0)
    g = sid(db, "g")
    before = {k for k, _ in db.store.scan("tslate/")}  # fill()'s samples were late too
    c = Compact(array("q", [g]), [], [0], [3.0], T0 + 10 * HOUR + 10_000)
    task = asyncio.create_task(ing.submit("agent1", "o1", 1, [], c))
    await asyncio.sleep(0)
    await ing.flush()
    assert await task is True
    assert {k for k, _ in db.store.scan("tslate/")} - before == {
        f"tslate/{g:08x}/{T0 + 10 * HOUR:012x}"}


def test_retention_keeps_what_is_not_rolled_up_and_drops_old_rollups(db: TSDB, clock: Clock) -> None:
    c = compactor(db, clock, retention=3600, rollup_retention=86_400)
    c.state.to = T0 + HOUR  # rolled up to here only
    b = Batch()
    for s in db.sids():
        rollup.roll_series(db, b, s, T0, T0 + HOUR)
    rollup.put_state(b, c.state)
    db.store.write(b)
    clock.t_ms = T0 + DAY + HOUR + 30 * MINUTE  # raw: all past retention; rollups: hour 0
    asyncio.run(expire_all(c, pause=0))
    g = sid(db, "g")
    assert [t for t, _ in db.read(g, 0, T0 + DAY)][:1] == [T0 + HOUR]  # not rolled up: kept
    assert len(list(db.read(g, 0, T0 + DAY))) == 360
    assert [k for k, _ in db.store.scan(rollup.chunk_prefix(MINUTE, g))] == []
    assert rollup.load_state(db).raw_from == T0 + HOUR
    # queries older than the raw samples read rollups instead: the hourly ones here, the
    # 1-minute ones of that span having gone with the same retention
    assert resolution(db, "g", 0, (T0 + 30 * MINUTE) / 1000) == HOUR
    assert resolution(db, "g", 0, (T0 + 2 * HOUR) / 1000) == RAW


def test_minute_rollups_go_sooner_than_the_hourly_ones(db: TSDB, clock: Clock) -> None:
    """metric_minute_rollup_retention: the 1-minute rollups of an old span are deleted while
    its hourly ones stay, and a query over that span is answered from the hours."""
    c = Compactor(db, 3600, 30 * 86_400, clock=clock, minute_retention=86_400)
    b = Batch()
    for s in db.sids():
        rollup.roll_series(db, b, s, T0, T0 + 3 * HOUR)
    c.state.to = T0 + 3 * HOUR
    rollup.put_state(b, c.state)
    db.store.write(b)
    clock.t_ms = T0 + DAY + HOUR + 30 * MINUTE  # the minutes of hour 0 are past a day
    asyncio.run(expire_all(c, pause=0))
    g = sid(db, "g")
    minute_keys = [k for k, _ in db.store.scan(rollup.chunk_prefix(MINUTE, g))]
    hour_keys = [k for k, _ in db.store.scan(rollup.chunk_prefix(HOUR, g))]
    assert minute_keys == [rollup.chunk_key(MINUTE, g, T0 + HOUR)]  # hour 0's minutes gone
    assert rollup.chunk_key(HOUR, g, T0 - T0 % DAY) in hour_keys  # its hour stays
    assert rollup.load_state(db).minute_from == T0 + HOUR
    # a 1-minute step over the deleted minutes is answered from the hours, later ones not
    assert resolution(db, "g", 60, (T0 + 30 * MINUTE) / 1000) == HOUR
    assert resolution(db, "g", 60, (T0 + HOUR + 30 * MINUTE) / 1000) == MINUTE


def test_the_engine_gives_the_same_over_raw_and_aligned_rollups(db: TSDB, clock: Clock) -> None:
    asyncio.run(run_once(compactor(db, clock), pause=0))
    # windows (t - 1h, t] that end just before a bucket's end hold the same raw samples
    times = [T0 + HOUR - 1, T0 + 2 * HOUR - 1]
    for fn in ("min_over_time", "max_over_time", "sum_over_time", "count_over_time",
               "avg_over_time"):
        expr = parse(f"{fn}(g[1h])")
        raw = engine.evaluate(expr, Source(db, "o1", RAW), [t - 0 for t in times])
        rolled = engine.evaluate(expr, Source(db, "o1", HOUR), [t + 1 for t in times])
        assert [s.vals for s in raw] == [pytest.approx(s.vals) for s in rolled], fn
