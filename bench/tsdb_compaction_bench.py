"""RocksDB's compaction under the TSDB's raw samples, by key layout, in process, on temporary
stores. Writes ``bench/results/tsdb_compaction.json``.

    .venv/bin/python bench/tsdb_compaction_bench.py [--series 40000] [--hours 6]

``--series`` series (an agent sends ~100) get a sample every 10 s for ``--hours`` hours of
sample time, written as fast as the store takes them in ingest-sized batches, once with
the keys the TSDB writes (hour partitions: ``tsr/<hour>/<sid>/<ms>``) and once with the
keys of stores from before them (``ts/<sid>/<time>``). For each: the bytes RocksDB's
compaction wrote after every hour of samples (its own cumulative figure), the CPU the
process spent (writes and RocksDB's background threads), and the store's size. What it
shows: with one key range per series for all time, every memtable flush overlaps every
series and compaction rewrites older data again at every level, so its writes per hour
grow with the store; with hour partitions new samples overlap only the current hour and
older files move down untouched.
"""

from __future__ import annotations

import argparse
import re
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, progress  # noqa: E402

from controller.monitor.tsdb import sample_key_bytes  # noqa: E402
from controller.store import Batch, RocksStore  # noqa: E402

INTERVAL_MS = 10_000
HOUR_MS = 3_600_000
_DOUBLE = struct.Struct(">d")
_COMPACTION = re.compile(r"Cumulative compaction: ([\d.]+) GB write")


def legacy_key(sid: int, t_ms: int) -> bytes:
    """A raw sample's key before hour partitions."""
    return b"ts/%08x/%012x" % (sid, t_ms)


def compaction_gb(store: RocksStore) -> float:
    db: Any = store._db  # noqa: SLF001 - RocksDB's own statistics
    m = _COMPACTION.search(db.property_value("rocksdb.stats") or "")
    return float(m.group(1)) if m else 0.0


def run_layout(name: str, key: Any, n_series: int, hours: int, t0: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"overcast-compaction-{name}-"))
    store = RocksStore(tmp / "store")
    try:
        values = [_DOUBLE.pack(float(i % 97)) for i in range(n_series)]
        per_hour: list[dict[str, float]] = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        last_gb = 0.0
        steps_per_hour = HOUR_MS // INTERVAL_MS
        for h in range(hours):
            for step in range(steps_per_hour):
                t = t0 + (h * steps_per_hour + step) * INTERVAL_MS
                b = Batch()
                b.samples = [(key(sid, t), values[sid]) for sid in range(n_series)]
                store.write(b)
            gb = compaction_gb(store)
            per_hour.append({"hour": h + 1, "compaction_gb": round(gb - last_gb, 3),
                             "cpu_s": round(time.process_time() - cpu0, 1)})
            progress(f"{name}: hour {h + 1}: compaction wrote {gb - last_gb:.2f} GB "
                     f"({gb:.2f} GB in all), CPU {time.process_time() - cpu0:.0f} s")
            last_gb = gb
        store.flush()
        time.sleep(2)  # a compaction the flush started
        db: Any = store._db  # noqa: SLF001
        return {
            "samples": n_series * steps_per_hour * hours,
            "compaction_gb": round(compaction_gb(store), 2),
            "cpu_s": round(time.process_time() - cpu0, 1),
            "wall_s": round(time.perf_counter() - wall0, 1),
            "sst_mib": round(int(db.property_int_value("rocksdb.total-sst-files-size")) / 2**20, 1),
            "last_hour_compaction_gb": per_hour[-1]["compaction_gb"],
            "per_hour": per_hour,
        }
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def summary(r: dict[str, Any]) -> list[str]:
    lines = []
    for name in ("hour_partitions", "before_partitions"):
        x = r[name]
        lines.append(
            f"{name.replace('_', ' ')}: {x['samples']:,} samples ({r['params']['series']:,} "
            f"series, {r['params']['hours']} h): compaction wrote {x['compaction_gb']} GB "
            f"({x['last_hour_compaction_gb']} GB in the last hour), {x['cpu_s']} s of CPU, "
            f"{x['sst_mib']} MiB on disk")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=40_000)
    ap.add_argument("--hours", type=int, default=6)
    a = ap.parse_args(argv)
    t0 = int(time.time() * 1000) // HOUR_MS * HOUR_MS - a.hours * HOUR_MS
    result: dict[str, Any] = {"bench": "tsdb_compaction",
                              "params": {"series": a.series, "hours": a.hours,
                                         "interval_s": INTERVAL_MS // 1000}}
    for name, key in (("hour_partitions", sample_key_bytes), ("before_partitions", legacy_key)):
        progress(f"{name}: {a.series:,} series every 10 s for {a.hours} h of sample time")
        result[name] = run_layout(name, key, a.series, a.hours, t0)
    return finish("tsdb_compaction", result, summary)


if __name__ == "__main__":
    sys.exit(main())
