"""Store benchmark: the RocksDB store through ``controller.store.open_store`` on a temporary
directory, in process. Writes ``bench/results/store.json``.

    .venv/bin/python bench/store_bench.py [--keys 100000] [--single 20000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, machine_doc, progress, rate  # noqa: E402

from controller.machines.model import MACHINE  # noqa: E402
from controller.store import Batch, open_store  # noqa: E402
from controller.store.docs import dump  # noqa: E402

TIME_CAP = 60.0  # seconds: no single measurement loop runs longer than this


def timed_loop(items: list[Any], fn: Any, cap: float = TIME_CAP) -> tuple[int, float]:
    """Call fn(item) for each item, stopping early at ``cap`` seconds; (done, seconds)."""
    t0 = time.perf_counter()
    deadline = t0 + cap
    n = 0
    for n, item in enumerate(items, 1):
        fn(item)
        if not n % 256 and time.perf_counter() > deadline:
            break
    return n, time.perf_counter() - t0


def run(keys: int, single: int, batch_size: int, get_many_size: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    org = "0123456789abcdef0123456789abcdef"
    prefix = f"machine/{org}/"
    progress(f"making {keys:,} machine documents")
    docs = []
    for i in range(keys):
        mid, doc = machine_doc(i, org, rng)
        docs.append((prefix + mid, dump(MACHINE, doc)))
    avg_value = statistics.fmean(len(v) for _, v in docs)
    small = [(f"single/{org}/{i:08d}", v) for i, (_, v) in enumerate(docs[:single])]

    tmp = Path(tempfile.mkdtemp(prefix="overcast-store-bench-"))
    out: dict[str, Any] = {"params": {"keys": keys, "single_ops": single, "batch_size": batch_size,
                                      "get_many_size": get_many_size,
                                      "avg_value_bytes": round(avg_value, 1)}}
    store = open_store(tmp / "store")
    try:
        # -- single puts (no cached count covers these keys: the plain write path)
        progress(f"single puts x{single:,}")
        n, s = timed_loop(small, lambda kv: store.put(kv[0], kv[1]))
        out["single_put"] = {"ops": n, "seconds": round(s, 3), "per_s": rate(n, s)}

        # -- single gets, hits in random order
        progress(f"single gets x{single:,}")
        get_keys = [k for k, _ in small]
        rng.shuffle(get_keys)
        n, s = timed_loop(get_keys, store.get)
        out["single_get"] = {"ops": n, "seconds": round(s, 3), "per_s": rate(n, s)}
        miss_keys = [f"single/{org}/x{i:08d}" for i in range(single)]
        n, s = timed_loop(miss_keys, store.get)
        out["single_get_miss"] = {"ops": n, "seconds": round(s, 3), "per_s": rate(n, s)}

        # -- batched puts: Batch + write, batch_size keys each
        progress(f"batched puts: {keys:,} keys in batches of {batch_size}")
        batches = []
        for i in range(0, keys, batch_size):
            b = Batch()
            for k, v in docs[i:i + batch_size]:
                b.put(k, v)
            batches.append(b)
        n, s = timed_loop(batches, store.write, cap=TIME_CAP * 3)
        written = min(keys, n * batch_size)
        out["batched_put"] = {"batches": n, "keys": written, "seconds": round(s, 3),
                              "keys_per_s": rate(written, s), "batches_per_s": rate(n, s)}
        if written < keys:
            raise RuntimeError(f"batched puts hit the time cap after {written} keys")

        # -- get_many: random keys, get_many_size per call
        progress(f"get_many: {keys:,} keys, {get_many_size} per call")
        all_keys = [k for k, _ in docs]
        shuffled = all_keys[:]
        rng.shuffle(shuffled)
        groups = [shuffled[i:i + get_many_size] for i in range(0, len(shuffled), get_many_size)]
        n, s = timed_loop(groups, store.get_many)
        got = min(keys, n * get_many_size)
        out["get_many"] = {"calls": n, "keys": got, "seconds": round(s, 3),
                           "calls_per_s": rate(n, s), "keys_per_s": rate(got, s)}

        # -- full prefix scans of the 100,000 keys
        def scan_once(keys_only: bool) -> tuple[int, float]:
            t0 = time.perf_counter()
            c = sum(1 for _ in store.scan(prefix, keys_only=keys_only))
            return c, time.perf_counter() - t0

        def scans(label: str) -> dict[str, Any]:
            res: dict[str, Any] = {}
            for keys_only in (False, True):
                runs = [scan_once(keys_only) for _ in range(3)]
                counted = {c for c, _ in runs}
                if counted != {keys}:
                    raise RuntimeError(f"scan counted {counted}, expected {keys}")
                best = min(t for _, t in runs)
                med = statistics.median(t for _, t in runs)
                res["keys_only" if keys_only else "with_values"] = {
                    "keys": keys, "seconds_best": round(best, 4), "seconds_median": round(med, 4),
                    "keys_per_s": rate(keys, med)}
            progress(f"scan {label}: {res['with_values']['seconds_median']} s with values, "
                     f"{res['keys_only']['seconds_median']} s keys only")
            return res

        out["prefix_scan"] = scans("after writes")

        # -- count: cold (scans the prefix once), warm (cached, kept exact by writes)
        t0 = time.perf_counter()
        c = store.count(prefix)
        cold = time.perf_counter() - t0
        if c != keys:
            raise RuntimeError(f"count {c} != {keys}")
        reps = 100_000
        t0 = time.perf_counter()
        for _ in range(reps):
            store.count(prefix)
        warm = (time.perf_counter() - t0) / reps
        out["count"] = {"keys": keys, "cold_ms": round(cold * 1000, 3),
                        "warm_us": round(warm * 1e6, 3), "warm_per_s": rate(1, warm)}

        # -- single puts under a prefix whose count is cached (each does one more get)
        progress("single puts under a counted prefix")
        extra = [(f"{prefix}zz{i:08d}", v) for i, (_, v) in enumerate(docs[:single])]
        n, s = timed_loop(extra, lambda kv: store.put(kv[0], kv[1]))
        out["single_put_counted_prefix"] = {"ops": n, "seconds": round(s, 3), "per_s": rate(n, s)}
        if store.count(prefix) != keys + n:
            raise RuntimeError("cached count drifted")
        for k, _ in extra[:n]:  # back to exactly `keys` under the prefix
            store.delete(k)

        # -- scans again after a flush and a reopen (SST files, block cache empty)
        store.flush()
        store.close()
        store = open_store(tmp / "store")
        out["prefix_scan_reopened"] = scans("after flush + reopen")
        t0 = time.perf_counter()
        store.count(prefix)
        out["count"]["cold_after_reopen_ms"] = round((time.perf_counter() - t0) * 1000, 3)
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def summary(r: dict[str, Any]) -> list[str]:
    return [
        f"single put   {r['single_put']['per_s']:>12,.0f} /s",
        f"single get   {r['single_get']['per_s']:>12,.0f} /s",
        f"batched put  {r['batched_put']['keys_per_s']:>12,.0f} keys/s (batches of "
        f"{r['params']['batch_size']})",
        f"get_many     {r['get_many']['keys_per_s']:>12,.0f} keys/s ({r['params']['get_many_size']} per call)",
        f"scan {r['params']['keys']:,} keys  {r['prefix_scan']['with_values']['seconds_median']} s "
        f"({r['prefix_scan']['with_values']['keys_per_s']:,.0f} keys/s), keys only "
        f"{r['prefix_scan']['keys_only']['seconds_median']} s",
        f"count        cold {r['count']['cold_ms']} ms, warm {r['count']['warm_us']} us",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--single", type=int, default=100_000, help="single puts and gets")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--get-many-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    return finish("store", run(a.keys, min(a.single, a.keys), a.batch_size, a.get_many_size,
                              a.seed), summary)


if __name__ == "__main__":
    sys.exit(main())
