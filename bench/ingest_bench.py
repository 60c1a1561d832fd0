"""Metric ingest: samples per second the TSDB stores, per core.

1. in process: ``controller.monitor.tsdb.TSDB`` and ``controller.agents.ingest.Ingestor`` (group
   commit, synced writes) on a real RocksDB (``controller.store.open_store``) in a temporary
   directory. Many agents (1,000 by default) each submit a ~100-sample batch shaped like the
   real agent's (cpu, mem, disk, diskio, net... with ``machine_id`` added as the servicer
   does), all at once, round after round:
   - ``first_round``: every series is new (created: tsmeta/tsidx writes);
   - ``steady``: the following rounds (existing series; what a controller does all day);
   figures: samples/s (wall clock) and samples per CPU-second of this process (all threads:
   the store write runs in a worker thread), which is samples/s per core; and a breakdown of
   one steady round: ``TSDB.add`` (Python) versus the synced store write (RocksDB);
2. end to end: one real controller, a few agents (8 by default, 2 simulator processes) each
   with its own mTLS stream sending 100-sample batches back to back (at most 32 unacknowledged,
   as the agent), for 20 s: samples acknowledged per second (acknowledged = stored), and the
   controller's CPU, so samples/s per controller core. The simulators share the 2 cores.

Writes ``bench/results/ingest.json``. Traffic goes to 127.0.0.1 only.

    .venv/bin/python bench/ingest_bench.py [--agents 1000] [--rounds 6] [--e2e-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CpuMeter,
    SimPool,
    agent_sample_shapes,
    exit_on_sigterm,
    finish,
    make_join_tokens,
    merge_latencies,
    proc_figures,
    progress,
    raise_nofile,
    rate,
)

from controller.agents.ingest import Ingestor  # noqa: E402
from controller.monitor.tsdb import TSDB  # noqa: E402
from controller.store import Batch, open_store  # noqa: E402
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller  # noqa: E402

TARGET_SAMPLES_PER_S = 100_000.0


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def round_batches(agents: list[str], shapes: list[tuple[str, dict[str, str]]], t_ms: int,
                  rng: random.Random) -> list[list[tuple[str, dict[str, str], float, int]]]:
    """One collection round of every agent, as the servicer hands it to the Ingestor: fresh
    label dicts with machine_id added."""
    out = []
    for aid in agents:
        extra = {"machine_id": aid}
        out.append([(m, {**labels, **extra}, rng.random() * 100, t_ms) for m, labels in shapes])
    return out


async def _submit_round(ing: Ingestor, org: str, agents: list[str], seqs: dict[str, int],
                        batches: list[Any]) -> list[bool]:
    subs = []
    for aid, samples in zip(agents, batches, strict=True):
        seqs[aid] += 1
        subs.append(ing.submit(aid, org, seqs[aid], samples))
    return await asyncio.gather(*subs)


async def in_process(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rng = random.Random(1)
    store = open_store(tmp / "store")
    try:
        tsdb = TSDB(store)
        ing = Ingestor(store, tsdb)
        runner = asyncio.create_task(ing.run())
        org = "0" * 31 + "1"
        agents = [f"{rng.getrandbits(128):032x}" for _ in range(args.agents)]
        shapes = agent_sample_shapes(args.samples)
        seqs = dict.fromkeys(agents, 0)
        per_round = len(agents) * len(shapes)
        t_ms = 1_800_000_000_000
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            batches = round_batches(agents, shapes, t_ms + r * 10_000, rng)
            gc.collect()
            c0, w0 = cpu_s(), time.perf_counter()
            res = await _submit_round(ing, org, agents, seqs, batches)
            wall, cpu = time.perf_counter() - w0, cpu_s() - c0
            if not all(res):
                raise RuntimeError("a batch was taken for a replay")
            rounds.append({"round": r, "samples": per_round, "wall_s": round(wall, 3),
                           "cpu_s": round(cpu, 3), "samples_per_s": rate(per_round, wall),
                           "samples_per_cpu_s": rate(per_round, cpu)})
            progress(f"in process: round {r}: {per_round:,} samples in {wall:.2f} s "
                     f"({rounds[-1]['samples_per_s']:,}/s, "
                     f"{rounds[-1]['samples_per_cpu_s']:,} per CPU-second)")
        steady = rounds[1:]
        s_samples = sum(x["samples"] for x in steady)
        s_wall = sum(x["wall_s"] for x in steady)
        s_cpu = sum(x["cpu_s"] for x in steady)

        # breakdown of one more steady round: the Python part and the store write
        batches = round_batches(agents, shapes, t_ms + args.rounds * 10_000, rng)
        gc.collect()
        b = Batch()
        t0 = time.perf_counter()
        n = 0
        for samples in batches:
            n += tsdb.add(b, org, samples)
        add_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.write(b, True)
        write_s = time.perf_counter() - t0
        runner.cancel()
        try:
            await runner
        except asyncio.CancelledError:
            pass
        return {
            "agents": len(agents), "samples_per_batch": len(shapes), "rounds": rounds,
            "series": tsdb.series_count, "groups_written": ing.batches_stored,
            "first_round": rounds[0],
            "steady": {"samples": s_samples, "wall_s": round(s_wall, 3), "cpu_s": round(s_cpu, 3),
                       "samples_per_s": rate(s_samples, s_wall),
                       "samples_per_cpu_s": rate(s_samples, s_cpu)},
            "breakdown_one_round": {"samples": n, "tsdb_add_s": round(add_s, 3),
                                    "tsdb_add_us_per_sample": round(add_s / n * 1e6, 2),
                                    "store_write_sync_s": round(write_s, 3),
                                    "store_write_us_per_sample": round(write_s / n * 1e6, 2)},
        }
    finally:
        store.close()


def end_to_end(args: argparse.Namespace, tmp: Path, agents: int) -> dict[str, Any]:
    c = Controller(tmp / f"e2e-{agents}")
    pool: SimPool | None = None
    out: dict[str, Any] = {"agents": agents, "seconds": args.e2e_seconds,
                           "in_flight": 32, "samples_per_batch": args.samples}
    try:
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
        c.start(timeout=120)
        assert c.proc is not None
        workers = max(1, min(args.e2e_workers, agents))
        per = [agents // workers + (1 if i < agents % workers else 0) for i in range(workers)]
        tokens = make_join_tokens(c, workers, max(per) + 1)
        pool = SimPool(workers, {"interval": 0, "samples": args.samples, "in_flight": 32},
                       c.tmp)
        pool.ask("enroll", [{"n": per[i], "url": c.url, "token": tokens[i]} for i in range(workers)])
        pool.ask("connect", [{"n": per[i]} for i in range(workers)], timeout=120)
        progress(f"end to end: {agents} streams, batches back to back, "
                 f"{args.e2e_seconds:.0f} s")
        # a short unmeasured flood first: the first batches create the series
        pool.ask("flood", {"seconds": 3.0}, timeout=120)
        cpu = CpuMeter(c.proc.pid)
        sims = [CpuMeter(p) for p in pool.pids()]
        replies = pool.ask("flood", {"seconds": args.e2e_seconds}, timeout=args.e2e_seconds + 120)
        ctl = cpu.read()
        acked = sum(r["acks"] for r in replies)
        samples = acked * args.samples
        out.update({
            "batches_acked": acked, "samples_stored": samples,
            "samples_per_s": rate(samples, ctl["wall_s"]),
            "controller_cpu": ctl,
            "samples_per_controller_cpu_s": rate(samples, ctl["cpu_s"]),
            "ack_latency": merge_latencies(replies),
            "simulators_cpu_pct_of_one_core": round(sum(s.read()["cpu_pct_of_one_core"]
                                                        for s in sims), 1),
            "controller": proc_figures(c.proc.pid),
        })
        progress(f"end to end: {out['samples_per_s']:,} samples/s stored, controller CPU "
                 f"{ctl['cpu_pct_of_one_core']} % -> {out['samples_per_controller_cpu_s']:,} "
                 f"per controller CPU-second (simulators {out['simulators_cpu_pct_of_one_core']} %)")
        return out
    except BaseException:
        if c.log_path.exists():
            print("controller log (last lines):\n" + "\n".join(
                c.log_path.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
        raise
    finally:
        if pool is not None:
            pool.close()
        if c.proc is not None:
            out["controller_exit_code"] = c.stop(timeout=60)


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="overcast-ingest-bench-"))
    out: dict[str, Any] = {"params": {"agents": args.agents, "rounds": args.rounds,
                                      "samples": args.samples, "e2e_agents": args.e2e_agents,
                                      "e2e_seconds": args.e2e_seconds}}
    try:
        progress(f"in process: {args.agents:,} agents x {args.samples} samples, "
                 f"{args.rounds} rounds (TSDB + Ingestor, RocksDB in {tmp})")
        out["in_process"] = asyncio.run(in_process(args, tmp))
        if args.e2e_seconds > 0:
            for i, n in enumerate(int(x) for x in args.e2e_agents.split(",") if x.strip()):
                out["end_to_end" if i == 0 else f"end_to_end_{n}_streams"] = end_to_end(args, tmp, n)
        ip = out["in_process"]["steady"]["samples_per_cpu_s"]
        out["targets"] = {"samples_per_s_per_core": {
            "target": f">= {TARGET_SAMPLES_PER_S:,.0f}", "value": ip,
            "met": ip >= TARGET_SAMPLES_PER_S,
            "note": "in process, steady state (series exist), per CPU-second of the process"}}
        e2e = out.get("end_to_end")
        if e2e:
            v = e2e["samples_per_controller_cpu_s"]
            out["targets"]["end_to_end_samples_per_controller_core"] = {
                "target": f">= {TARGET_SAMPLES_PER_S:,.0f}", "value": v,
                "met": v >= TARGET_SAMPLES_PER_S,
                "note": "through one controller (parse, servicer, ingest, store), per CPU-second "
                        "of the controller process"}
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(r: dict[str, Any]) -> list[str]:
    ip = r["in_process"]
    lines = [f"in process, first round (new series): {ip['first_round']['samples_per_s']:,} "
             f"samples/s, {ip['first_round']['samples_per_cpu_s']:,} per CPU-second",
             f"in process, steady: {ip['steady']['samples_per_s']:,} samples/s, "
             f"{ip['steady']['samples_per_cpu_s']:,} per CPU-second (TSDB.add "
             f"{ip['breakdown_one_round']['tsdb_add_us_per_sample']} us/sample, synced write "
             f"{ip['breakdown_one_round']['store_write_us_per_sample']} us/sample)"]
    for e in (v for k, v in r.items() if k.startswith("end_to_end")):
        lines.append(f"end to end ({e['agents']} streams): {e['samples_per_s']:,} samples/s "
                     f"stored, controller CPU {e['controller_cpu']['cpu_pct_of_one_core']} % -> "
                     f"{e['samples_per_controller_cpu_s']:,} per controller CPU-second; ack p50 "
                     f"{e['ack_latency'].get('p50_ms')} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000, help="agents in process")
    ap.add_argument("--rounds", type=int, default=6, help="rounds in process (first: new series)")
    ap.add_argument("--samples", type=int, default=100, help="samples per batch")
    ap.add_argument("--e2e-agents", default="8,200",
                    help="streams end to end, comma-separated: one run each (the first is the "
                         "figure with a target)")
    ap.add_argument("--e2e-workers", type=int, default=2, help="simulator processes end to end")
    ap.add_argument("--e2e-seconds", type=float, default=20.0, help="0: no end-to-end part")
    a = ap.parse_args(argv)
    exit_on_sigterm()
    return finish("ingest", run(a), summary)


if __name__ == "__main__":
    sys.exit(main())
