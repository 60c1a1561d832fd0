"""TSDB benchmark, in process, on temporary stores. Writes ``bench/results/tsdb.json``.

    .venv/bin/python bench/tsdb_bench.py [--series 1000] [--runs 30]

1. One agent's day: ~100 series (gauges, counters, constants: what the agent sends) every
   10 s, stored as the ingest path stores them (one head entry per batch) and sealed into
   blocks as the compaction task does it (its CPU seconds); the store flushed and fully
   compacted (RocksDB), then its SST bytes per sample. Then rolled up as the compaction task does it
   (a run every 5 minutes of the day), with the CPU seconds that took, and the bytes the
   rollups add per day. From those: disk use per day for one agent, and at steady state with
   the default retentions (7 days raw, 1 year rollups).
2. A day of 10 s samples for one series, queried over REST's evaluate() at 10 s steps (raw
   samples, 8,641 points): p50 (target < 20 ms).
3. A week at 1 h rollups for 1,000 series: a week of samples every 5 minutes for 1,000
   series rolled up, the last 7 minutes every 10 s, not rolled up yet and in the head (a
   week that ends now, with the compaction task as far behind as it gets), queried at 1 h steps (target
   < 200 ms for evaluate(), as for the day; also timed: the whole REST body, evaluate() and
   the JSON the route writes with it in its worker thread).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson  # noqa: E402
from common import finish, percentiles, progress  # noqa: E402

from controller.agents.server import GC_THRESHOLDS  # noqa: E402
from controller.monitor import compact, rollup  # noqa: E402
from controller.monitor.compact import ROLL_DELAY, Compactor  # noqa: E402
from controller.monitor.query import evaluate, resolution  # noqa: E402
from controller.monitor.rollup import HOUR, MINUTE  # noqa: E402
from controller.monitor.tsdb import (  # noqa: E402
    TSDB,
    head_key_bytes,
    head_value,
    sample_key_bytes,
)
from controller.store import Batch, RocksStore, open_store  # noqa: E402

ORG = "0123456789abcdef0123456789abcdef"
DAY_S = 86_400
INTERVAL_MS = 10_000
DAY_TARGET_MS = 20.0
WEEK_TARGET_MS = 200.0
_DOUBLE = struct.Struct(">d")


def agent_series(rng: random.Random) -> list[tuple[str, dict[str, str], str]]:
    """(metric, labels, kind) of one agent: what agent/collect/metrics.py sends for a host
    with 2 CPUs, 2 disks, 2 interfaces and 3 file systems (~100 series)."""
    out: list[tuple[str, dict[str, str], str]] = []
    for cpu in ("cpu-total", "cpu0", "cpu1"):
        for f in ("user", "system", "idle", "iowait", "steal", "active", "nice", "irq"):
            out.append((f"cpu_usage_{f}", {"cpu": cpu}, "percent"))
    for name in ("load1", "load5", "load15"):
        out.append((f"system_{name}", {}, "gauge"))
    out += [("system_n_cpus", {}, "constant"), ("system_uptime", {}, "counter"),
            ("system_n_users", {}, "small"), ("processes_total", {}, "small")]
    for m in ("total", "available", "used", "free", "cached", "buffers"):
        out.append((f"mem_{m}", {}, "constant" if m == "total" else "bytes"))
    out += [("mem_used_percent", {}, "percent"), ("mem_available_percent", {}, "percent")]
    for m in ("total", "used", "free", "used_percent"):
        out.append((f"swap_{m}", {}, "constant"))
    for path in ("/", "/boot", "/var"):
        for m in ("total", "free", "used", "used_percent", "inodes_total", "inodes_free", "inodes_used"):
            kind = "constant" if "total" in m else ("percent" if "percent" in m else "bytes")
            out.append((f"disk_{m}", {"path": path}, kind))
    for dev in ("sda", "sdb"):
        for m in ("reads", "writes", "read_bytes", "write_bytes", "read_time", "write_time", "io_time"):
            out.append((f"diskio_{m}", {"name": dev}, "counter"))
    for nic in ("eth0", "lo"):
        for m in ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "err_in", "err_out",
                  "drop_in", "drop_out"):
            out.append((f"net_{m}", {"interface": nic}, "counter" if "err" not in m and "drop" not in m
                        else "constant"))
    rng.shuffle(out)
    return out


class Walk:
    """A plausible value stream for one series of a kind."""

    def __init__(self, kind: str, rng: random.Random) -> None:
        self.kind = kind
        self.rng = rng
        self.v = {"percent": rng.uniform(1, 60), "gauge": rng.uniform(0, 2),
                  "small": float(rng.randint(1, 300)), "bytes": rng.uniform(1e8, 8e9),
                  "counter": float(rng.randint(10**6, 10**12)),
                  "constant": float(rng.choice([2, 4, 8 * 2**30, 100 * 2**30]))}[kind]

    def next(self) -> float:
        r, k = self.rng, self.kind
        if k == "percent":
            self.v = min(100.0, max(0.0, self.v + r.gauss(0, 2)))
        elif k == "gauge":
            self.v = max(0.0, self.v + r.gauss(0, 0.05))
        elif k == "small":
            self.v = float(max(0, int(self.v) + r.randint(-2, 2)))
        elif k == "bytes":
            self.v = max(0.0, self.v + r.gauss(0, 1e6))
        elif k == "counter":
            self.v += float(r.randint(0, 200_000))
        return self.v


def sst_bytes(store: RocksStore) -> int:
    """Flush the memtables, compact everything (RocksDB), and return the live SST bytes.
    (The benchmark reaches past the Store interface for RocksDB's own compaction.)"""
    store.flush()
    db: Any = store._db  # noqa: SLF001
    db.compact_range(None, None)
    return int(db.property_int_value("rocksdb.live-sst-files-size"))


def write_day(db: TSDB, series: list[tuple[str, dict[str, str], str]], start_ms: int,
              days: float, rng: random.Random) -> tuple[list[int], int, float]:
    """Samples every 10 s from ``start_ms``, as the ingest path stores an agent's batches
    (one head entry each), then sealed into blocks as the compaction task does it (timed:
    CPU seconds); (sids, samples, sealing's CPU seconds)."""
    b = Batch()
    sids = [db.sid_for(b, ORG, m, dict(labels, machine_id="m-agent")) for m, labels, _ in series]
    for sid in sids:
        b.put(f"tssrc/{sid:08x}", b"m-agent")
    db.store.write(b)
    db.settle(True)
    db.head_from = db.head_closed = min(db.head_from, start_ms)
    walks = [Walk(kind, rng) for _, _, kind in series]
    n = 0
    steps = int(days * DAY_S * 1000 / INTERVAL_MS)
    ids = array("I", sids)
    b = Batch()
    for i in range(steps):
        t = start_ms + i * INTERVAL_MS
        b.samples.append((head_key_bytes("m-agent", t, i + 1),
                          head_value(ids, [w.next() for w in walks])))
        n += len(sids)
        if len(b.samples) >= 500:
            db.store.write(b)
            b = Batch()
    db.store.write(b)
    t0 = time.process_time()
    while not db.seal(start_ms + steps * INTERVAL_MS + 5 * MINUTE)[1]:
        pass
    return sids, n, time.process_time() - t0


def rollup_pack(v: float) -> bytes:
    return _DOUBLE.pack(v)  # as the TSDB stores a value


def one_agent_day(tmp: Path, rng: random.Random, days: float = 1.0) -> dict[str, Any]:
    store = open_store(tmp / "agent")
    db = TSDB(store)
    series = agent_series(rng)
    day0 = (int(time.time()) // DAY_S - 3) * DAY_S * 1000  # a whole UTC day, 3 days ago
    progress(f"one agent: {len(series)} series every 10 s for {days:g} day(s)")
    span = int(days * DAY_S * 1000)
    t = time.perf_counter()
    _, n, seal_cpu = write_day(db, series, day0, days, rng)
    write_s = time.perf_counter() - t
    raw = sst_bytes(store)
    db_any: Any = store._db  # noqa: SLF001 - RocksDB's own figure
    # what RocksDB holds in memory per file beside the block cache (indexes), per raw byte:
    # see BLOCK_CACHE_BYTES in controller/store/rocks.py
    readers = int(db_any.property_int_value("rocksdb.estimate-table-readers-mem"))
    progress(f"  {n:,} samples, {raw / n:.2f} bytes each after compaction; "
             f"{readers / raw * 100:.2f} % of that held in memory outside the block cache")
    # the compaction task's work over that day: a run every 5 minutes
    clock_ms = [day0 + ROLL_DELAY]

    c = Compactor(db, 7 * DAY_S, 365 * DAY_S, clock=lambda: clock_ms[0] / 1000)
    c.state.to = day0
    cpu = 0.0
    runs = 0
    while clock_ms[0] < day0 + span + ROLL_DELAY + 5 * MINUTE:
        clock_ms[0] += 5 * MINUTE
        t0 = time.process_time()
        while c.seal_slice():  # nothing left to seal: write_day did
            pass
        if c.begin():
            while c.roll_slice():
                pass
            runs += 1
        cpu += time.process_time() - t0
    assert c.state.to >= day0 + span, c.state
    total = sst_bytes(store)
    rolled = total - raw
    # the same day rolled up in one run (a catch-up after a long stop)
    b = Batch()
    t0 = time.process_time()
    for s in db.sids():
        rollup.roll_series(db, b, s, day0, day0 + span)
    catchup_cpu = time.process_time() - t0
    keys_1m = sum(1 for _ in store.scan("ts1m/", keys_only=True))
    keys_1h = sum(1 for _ in store.scan("ts1h/", keys_only=True))
    store.close()
    raw, rolled = int(raw / days), int(rolled / days)  # per day
    n_day = int(n / days)
    per_day_mib = (raw + rolled) / 2**20
    steady = 7 * raw + 365 * rolled
    cpu, catchup_cpu = cpu / days, catchup_cpu / days
    seal_cpu /= days
    progress(f"  rollups: {rolled / 2**20:.2f} MiB a day; rolling the day up took "
             f"{cpu:.2f} s of CPU in {runs} runs ({catchup_cpu:.2f} s as one run); sealing "
             f"the head into blocks {seal_cpu:.2f} s")
    return {"series": len(series), "samples": n, "days": days, "write_seconds": round(write_s, 2),
            "raw_sst_bytes_per_day": raw, "raw_bytes_per_sample": round(raw / n_day, 2),
            "table_readers_mem_bytes": readers,
            "table_readers_mem_pct_of_sst": round(readers / (raw * days) * 100, 3),
            "rollup_sst_bytes_per_day": rolled, "rollup_keys": {"1m": keys_1m, "1h": keys_1h},
            "rollup_bytes_per_series_day": round(rolled / len(series), 1),
            "disk_mib_per_day": round(per_day_mib, 2),
            "disk_mib_per_day_raw": round(raw / 2**20, 2),
            "disk_mib_per_day_rollups": round(rolled / 2**20, 3),
            "steady_state_gib_default_retention": round(steady / 2**30, 2),
            "seal_cpu_seconds_per_day": round(seal_cpu, 3),
            "rollup_cpu_seconds_per_day": round(cpu, 3), "rollup_runs": runs,
            "rollup_cpu_seconds_per_day_one_run": round(catchup_cpu, 3)}


def day_query(tmp: Path, rng: random.Random, runs: int) -> dict[str, Any]:
    store = open_store(tmp / "day")
    db = TSDB(store)
    now_s = int(time.time())
    start_ms = (now_s - DAY_S) * 1000
    series = [("cpu_usage_active", {"cpu": "cpu-total"}, "percent")]
    write_day(db, series, start_ms, 1.0, rng)
    store.flush()
    q = 'cpu_usage_active{cpu="cpu-total"}'
    start, end = str(start_ms / 1000), str(start_ms / 1000 + DAY_S)
    assert resolution(db, q, 10, float(start)) == 0  # raw samples
    times, cpu = timed(runs, lambda: evaluate(db, ORG, q, start=start, end=end, step="10s"))
    r = evaluate(db, ORG, q, start=start, end=end, step="10s")
    points = len(r["data"]["result"][0]["values"])
    rate_times = []
    for _ in range(max(3, runs // 3)):
        t = time.perf_counter()
        evaluate(db, ORG, "rate(cpu_usage_active[1m])", start=start, end=end, step="10s")
        rate_times.append(time.perf_counter() - t)
    store.close()
    out = {"points": points, "selector": percentiles(times), "selector_cpu": percentiles(cpu),
           "rate_1m": percentiles(rate_times)}
    progress(f"a day of one series at 10 s steps ({points} points): p50 "
             f"{out['selector']['p50_ms']} ms (rate: {out['rate_1m']['p50_ms']} ms)")
    return out


def timed(runs: int, fn: Any) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``runs`` calls (the machine may be shared: CPU time is the
    steadier figure)."""
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def week_query(tmp: Path, rng: random.Random, n_series: int, runs: int) -> dict[str, Any]:
    store = open_store(tmp / "week")
    db = TSDB(store)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - 7 * DAY_S * 1000
    b = Batch()
    sids = [db.sid_for(b, ORG, "cpu_usage_active", {"machine_id": f"m{i:04d}", "cpu": "cpu-total"})
            for i in range(n_series)]
    for i, sid in enumerate(sids):  # the agent whose head entries hold the series
        b.put(f"tssrc/{sid:08x}", b"m%04d" % i)
    store.write(b)
    db.settle(True)
    # rolled up to ROLL_EVERY + ROLL_DELAY ago: the most the compaction task lags (a run
    # every ROLL_EVERY of the minutes that ended ROLL_DELAY before)
    to = rollup.floor(now_ms - ROLL_DELAY - int(compact.ROLL_EVERY * 1000), MINUTE)
    progress(f"a week for {n_series:,} series: every 5 minutes, then every 10 s for the last "
             f"{(now_ms - to) / 60_000:.0f} minutes (not rolled up yet)")
    walks = [Walk("percent", rng) for _ in sids]
    n = 0
    b = Batch()
    t = start_ms
    db.head_from = db.head_closed = to  # the minutes not rolled up yet are in the head, not sealed yet
    while t < now_ms:
        step = 5 * MINUTE if t < to else INTERVAL_MS
        for i, (sid, w) in enumerate(zip(sids, walks, strict=True)):
            if t < to:
                b.samples.append((sample_key_bytes(sid, t), rollup_pack(w.next())))
            else:  # an agent's batch, of one series here
                b.samples.append((head_key_bytes(f"m{i:04d}", t, t // INTERVAL_MS),
                                  head_value(array("I", [sid]), [w.next()])))
        n += len(sids)
        if len(b.samples) >= 50_000:
            store.write(b)
            b = Batch()
        t += step
    store.write(b)
    progress(f"  {n:,} samples; rolling them up")
    t0 = time.perf_counter()
    b = Batch()
    for i, sid in enumerate(sids):
        rollup.roll_series(db, b, sid, rollup.floor(start_ms, HOUR), to)
        if i % 100 == 99:
            store.write(b)
            b = Batch()
    rollup.put_state(b, rollup.RollupState(to=to))
    store.write(b)
    roll_s = time.perf_counter() - t0
    store.flush()
    q = "cpu_usage_active"
    s0, s1 = str(start_ms / 1000), str(now_ms / 1000)
    assert resolution(db, q, 3600, float(s0)) == HOUR
    results: dict[str, Any] = {}
    for name, query in (("selector", q), ("avg_over_time", "avg_over_time(cpu_usage_active[1h])"),
                        ("max_by_machine", "max by (machine_id) (cpu_usage_active)"),
                        ("avg_all", "avg(cpu_usage_active)")):
        times, cpu = timed(runs, lambda query=query: evaluate(db, ORG, query, start=s0, end=s1,
                                                               step="1h"))
        r = evaluate(db, ORG, query, start=s0, end=s1, step="1h")
        results[name] = percentiles(times)
        results[name]["cpu_p50_ms"] = percentiles(cpu)["p50_ms"]
        if name == "selector":  # as GET /api/v2/datapoints answers it (controller/monitor/routes.py)
            body, _ = timed(runs, lambda query=query: orjson.dumps(
                {"data": evaluate(db, ORG, query, start=s0, end=s1, step="1h"), "meta": {}}))
            results[name]["with_json_p50_ms"] = percentiles(body)["p50_ms"]
        results[name]["series"] = len(r["data"]["result"])
        results[name]["points"] = sum(len(x["values"]) for x in r["data"]["result"])
        progress(f"  {name}: p50 {results[name]['p50_ms']} ms "
                 f"({results[name]['series']} series, {results[name]['points']:,} points)")
    store.close()
    return {"series": n_series, "samples": n, "rollup_seconds": round(roll_s, 2), **results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--days", type=float, default=1.0, help="of one agent's samples (disk, CPU)")
    a = ap.parse_args(argv)
    gc.set_threshold(*GC_THRESHOLDS)  # as the controller runs (controller/agents/server.py)
    rng = random.Random(a.seed)
    load_before = os.getloadavg()  # the machine is shared: how busy it was, with the figures
    tmp = Path(tempfile.mkdtemp(prefix="overcast-tsdb-bench-"))
    try:
        agent = one_agent_day(tmp, rng, a.days)
        day = day_query(tmp, rng, a.runs)
        week = week_query(tmp, rng, a.series, max(5, a.runs // 3))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    day_p50 = day["selector"]["p50_ms"]
    week_p50 = week["selector"]["p50_ms"]
    result = {
        "params": {"series": a.series, "runs": a.runs, "seed": a.seed, "interval_s": 10,
                   "days": a.days},
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "one_agent_day": agent, "day_query": day, "week_query": week,
        "targets": {
            "day_of_10s_one_series_p50_ms": {"value": day_p50, "target": f"< {DAY_TARGET_MS}",
                                             "met": day_p50 < DAY_TARGET_MS},
            "week_1h_1000_series_p50_ms": {"value": week_p50, "target": f"< {WEEK_TARGET_MS}",
                                           "met": week_p50 < WEEK_TARGET_MS},
        },
    }
    return finish("tsdb", result, summary)


def summary(r: dict[str, Any]) -> list[str]:
    ag, day, week = r["one_agent_day"], r["day_query"], r["week_query"]
    return [
        f"load average (1, 5, 15 min) before {r['load_average']['before']}, after "
        f"{r['load_average']['after']}",
        f"disk: {ag['raw_bytes_per_sample']} bytes per raw sample after compaction; one agent "
        f"({ag['series']} series every 10 s): {ag['disk_mib_per_day_raw']} MiB raw + "
        f"{ag['disk_mib_per_day_rollups']} MiB rollups a day; "
        f"{ag['steady_state_gib_default_retention']} GiB at steady state (7 d raw, 1 y rollups)",
        f"rollup CPU: {ag['rollup_cpu_seconds_per_day']} s per agent-day in "
        f"{ag['rollup_runs']} runs ({ag['rollup_cpu_seconds_per_day_one_run']} s as one run)",
        f"a day of 10 s for one series ({day['points']} points): p50 {day['selector']['p50_ms']} ms "
        f"(CPU {day['selector_cpu']['p50_ms']} ms), rate() p50 {day['rate_1m']['p50_ms']} ms",
        f"a week at 1 h for {week['series']} series: p50 {week['selector']['p50_ms']} ms "
        f"(CPU {week['selector']['cpu_p50_ms']} ms; with the REST body's JSON "
        f"{week['selector']['with_json_p50_ms']} ms; avg_over_time {week['avg_over_time']['p50_ms']} ms, "
        f"max by machine {week['max_by_machine']['p50_ms']} ms, avg of all "
        f"{week['avg_all']['p50_ms']} ms)",
    ]


if __name__ == "__main__":
    sys.exit(main())
