"""Clouds benchmark: the controller's CPU cost of a poll cycle of 10,000 machines across 10
clouds (every cloud polled once), without a provider: everything a poll does once the
provider has answered, through the pollers' own path (``Pollers.poll_now`` ->
``CloudService.poll``):

  * the diff (``inventory.reconcile``) and its atomic store write with one audit entry per
    change (``writer.commit_many``), conditional on nothing having changed meanwhile;
  * ``link_agents``: the organisation's agents scanned, and while any is unlinked, the
    cloud's machines matched against them (100 agents: 70 on hosts of the clouds, linked in
    the first cycle, 30 on hosts no cloud has, so every cycle scans every cloud's machines);
  * the cloud's status write, and the live events: each change's and each audit entry's, and
    the pollers' "cloud changed" event, delivered to one watcher of the organisation (a live
    console open, the dearer case: without a watcher publishing returns at once).

Three kinds of cycle, as process CPU seconds (worker threads included): first sight, nothing
changed, and churn (per cloud 5 % change state, 1 % vanish, 1 % new). Also where the time
goes (CPU of each part, measured in the thread that runs it). Writes
``bench/results/clouds.json``. Target: < 1 s of CPU per cycle.

    .venv/bin/python bench/clouds_bench.py [--clouds 10] [--machines 1000] [--agents 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMAGES, LOCATIONS, SIZES, finish, progress  # noqa: E402

from controller.clouds import service as service_module  # noqa: E402
from controller.clouds.inventory import Snapshot  # noqa: E402
from controller.clouds.model import CLOUD, agents_cloud_id, cloud_key  # noqa: E402
from controller.clouds.poller import Pollers  # noqa: E402
from controller.clouds.providers.base import MachineRecord  # noqa: E402
from controller.clouds.service import CloudService  # noqa: E402
from controller.events.bus import EventBus, Subscription  # noqa: E402
from controller.events.writer import Writer  # noqa: E402
from controller.secrets import SecretBox  # noqa: E402
from controller.settings import Settings  # noqa: E402
from controller.store import open_store  # noqa: E402
from controller.store.base import Batch, Store  # noqa: E402
from controller.store.docs import dump  # noqa: E402

ORG = "0123456789abcdef0123456789abcdef"
LINKED_SHARE = 0.7  # of the agents: on hosts of the clouds (the rest on hosts no cloud has)


def mac(cloud: int, i: int) -> str:
    return f"02:00:00:{cloud:02x}:{i // 256:02x}:{i % 256:02x}"


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
            price_per_hour=0.0104, macs=[mac(cloud, i)],
            extra={"architecture": "x86_64", "hypervisor": "xen", "virtualization_type": "hvm",
                   "key_name": "ops", "monitoring": "disabled", "ebs_optimized": False,
                   "root_device_type": "ebs", "security_groups": ["sg-1", "sg-2"]}))
    return out


def add_agents(store: Store, n: int, clouds: int, machines: int) -> int:
    """``n`` agents with their own machines in the Agents cloud, as enrolment leaves them:
    ``LINKED_SHARE`` of them on hosts the clouds list (matched by MAC), the others on hosts no
    cloud has. Returns how many can be linked."""
    linkable = int(n * LINKED_SHARE)
    b = Batch()
    for a in range(n):
        aid = f"agent{a:04d}" + "0" * 23
        if a < linkable:  # the a-th of these sits on a machine of cloud a % clouds
            cloud, i = a % clouds, (a * 37) % machines
            iface_mac, address = mac(cloud, i), f"10.{cloud}.{i // 250}.{i % 250}"
        else:
            iface_mac, address = f"06:00:00:00:{a // 256:02x}:{a % 256:02x}", f"192.168.7.{a % 250}"
        b.put(f"agent/{ORG}/{aid}", json.dumps({
            "id": aid, "org": ORG, "name": f"host-{a}", "machine": aid}).encode())
        b.put(f"machine/{ORG}/{aid}", json.dumps({
            "id": aid, "org": ORG, "name": f"host-{a}", "cloud": agents_cloud_id(ORG),
            "provider": "other", "agent": aid, "state": "running", "hostname": f"host-{a}",
            "private_ips": [address], "public_ips": [], "os_type": "linux", "cores": 2,
            "extra": {"interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00"},
                                     {"name": "eth0", "mac": iface_mac}],
                      "system_uuid": f"5e1f{a:04d}-0000-4000-8000-000000000000"}}).encode())
    store.write(b)
    return linkable


class BenchClouds(CloudService):
    """The cloud service with the provider's answer given: ``call`` returns the cloud's
    prepared snapshot (the provider's own time is not the controller's cost)."""

    snaps: dict[str, list[MachineRecord]] = {}

    async def call(self, doc: dict[str, Any], purpose: str, fn: Any, what: str = "",
                   timeout: float | None = None) -> Any:
        return Snapshot(machines=list(self.snaps[doc["id"]]))


class Parts:
    """CPU seconds of each part of a poll, measured in the thread that runs it."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - t
                self.calls[name] = self.calls.get(name, 0) + 1
        return wrapper

    def take(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.cpu.items()}
        self.cpu, self.calls = {}, {}
        return out


async def cycle(pollers: Pollers, cids: list[str], watcher: Subscription,
                parts: Parts, outcomes: list[Any]) -> dict[str, Any]:
    outcomes.clear()
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    states = [await pollers.poll_now(ORG, cid) for cid in cids]
    result = {"cpu_s": round(time.process_time() - t_cpu, 3),
              "wall_s": round(time.perf_counter() - t_wall, 3)}
    bad = [s for s in states if s.get("state") != "ok"]
    if bad:
        raise SystemExit(f"a poll failed: {bad[0]}")
    events = watcher.queue.qsize()
    while not watcher.queue.empty():  # what the console would read, outside the timing
        watcher.queue.get_nowait()
    result.update(
        audited_changes=sum(len(o.changes) for o in outcomes),
        quiet_writes=sum(len(o.quiet.puts) for o in outcomes),
        events_delivered=events,
        cpu_by_part_s=parts.take())
    return result


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    store = open_store(tmp / "db")
    settings = Settings(data_dir=str(tmp))
    bus = EventBus()
    bus.bind(asyncio.get_running_loop())
    watcher = bus.subscribe(ORG, maxsize=10_000_000)  # someone of the org has a console open
    clouds = BenchClouds(settings, store, Writer(store, bus), SecretBox(os.urandom(32)))
    pollers = Pollers(settings, clouds, bus)

    # the parts, timed where they run (reconcile and link_agents in worker threads)
    parts, outcomes = Parts(), []
    real_reconcile = service_module.reconcile

    def reconcile(*a: Any, **kw: Any) -> Any:
        out = real_reconcile(*a, **kw)
        outcomes.append(out)
        return out

    service_module.reconcile = parts.timed("reconcile (diff)", reconcile)  # type: ignore[assignment]
    service_module.link_agents = parts.timed(  # type: ignore[assignment]
        "link_agents (scan and match)", service_module.link_agents)
    clouds._store_outcome = parts.timed(  # type: ignore[method-assign]
        "store write and audit (with its events)", clouds._store_outcome)
    bus.publish = parts.timed("bus publish (all events)", bus.publish)  # type: ignore[method-assign]

    snaps = {f"cloud{c:02d}" + "0" * 25: records(c, args.machines, rng) for c in range(args.clouds)}
    BenchClouds.snaps = snaps
    b = Batch()
    for cid in snaps:
        b.put(cloud_key(ORG, cid), dump(CLOUD, {
            "id": cid, "org": ORG, "name": cid, "provider": "amazon", "config": {},
            "credentials_set": [], "enabled": True, "poll_interval": 60, "tags": {},
            "features": {"compute": True, "dns": False}, "_rev": "bench"}))
    store.write(b)
    linkable = add_agents(store, args.agents, args.clouds, args.machines)
    cids = list(snaps)
    total = args.clouds * args.machines

    progress(f"first poll cycle: {total:,} machines seen for the first time, "
             f"{args.agents} agents ({linkable} on hosts of the clouds)")
    first = await cycle(pollers, cids, watcher, parts, outcomes)
    progress(f"  {first}")
    linked = sum(1 for _, raw in store.scan(f"agent/{ORG}/")
                 if json.loads(raw)["machine"] != json.loads(raw)["id"])
    progress(f"  {linked} agents linked to their cloud machines")
    progress("steady poll cycles: nothing changed (the unlinked agents are matched again)")
    steady = [await cycle(pollers, cids, watcher, parts, outcomes) for _ in range(3)]
    progress(f"  {steady[-1]}")
    # churn: 5 % change state, 1 % vanish, 1 % new, per cloud
    for cid, recs in snaps.items():
        for r in rng.sample(recs, len(recs) // 20):
            r.state = "stopped" if r.state == "running" else "running"
        one_in_100 = len(recs) // 100
        for r in rng.sample(recs, one_in_100):
            recs.remove(r)
        fresh = records(99, one_in_100, rng)
        for j, r in enumerate(fresh):
            r.external_id = f"new-{cid}-{j}"
        recs.extend(fresh)
    progress("churn poll cycle: 5 % changed, 1 % missing, 1 % new")
    churn = await cycle(pollers, cids, watcher, parts, outcomes)
    progress(f"  {churn}")
    best_steady = min(steady, key=lambda s: s["cpu_s"])
    await pollers.stop()
    clouds.runner.close()
    store.close()
    return {
        "clouds": args.clouds, "machines": total,
        "agents": {"total": args.agents, "on_cloud_hosts": linkable, "linked": linked,
                   "unlinked_each_cycle": args.agents - linked},
        "watchers": 1,
        "first_cycle": first, "steady_cycle": best_steady, "churn_cycle": churn,
        "targets": {
            f"CPU s per poll cycle, {kind}": {"value": c["cpu_s"], "target": "< 1.0",
                                              "met": c["cpu_s"] < 1.0}
            for kind, c in (("first sight", first), ("nothing changed", best_steady),
                            ("churn", churn))},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clouds", type=int, default=10)
    ap.add_argument("--machines", type=int, default=1000, help="machines per cloud")
    ap.add_argument("--agents", type=int, default=100, help="agents in the organisation")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="oc-clouds-bench-"))
    try:
        result = asyncio.run(run(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return finish("clouds", result, summary)


def summary(r: dict[str, Any]) -> list[str]:
    f, s, c = r["first_cycle"], r["steady_cycle"], r["churn_cycle"]
    return [f"{r['machines']:,} machines in {r['clouds']} clouds, {r['agents']['total']} agents "
            f"({r['agents']['unlinked_each_cycle']} never matched), one live watcher: CPU per "
            f"poll cycle {f['cpu_s']} s first sight ({f['audited_changes']:,} audited), "
            f"{s['cpu_s']} s nothing changed, {c['cpu_s']} s with churn "
            f"({c['audited_changes']} audited)",
            "nothing changed, by part: " + ", ".join(f"{k} {v} s" for k, v in
                                                      s["cpu_by_part_s"].items())]


if __name__ == "__main__":
    sys.exit(main())
