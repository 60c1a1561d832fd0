"""Fan-out: one ad-hoc command on 1,000 and 10,000 agents, through the real API.

1. a temporary data directory, the admin made offline, the controller started (through
   tests/support/controller.py) and an API token made;
2. simulated agents (``sim_exec.py``: common's simulators, which also answer commands), each
   enrolled with a join token tagged ``bench=fanout`` (its machine gets the tag), its own
   key, certificate, mutual-TLS channel and ``Connect`` stream, sending metric batches at
   the agent's 10 s interval (``--interval``; 0: none);
3. for each level (``--levels``, default 1,000 then 10,000: the agents are enrolled and
   connected up to the level, then a warm-up), ``--rounds`` measured rounds (after one
   unmeasured warm-up round) of ``POST /api/v2/commands {"command": "true", "machines":
   ["tag:bench=fanout"]}`` with the API token, the job then polled
   (``GET /api/v2/jobs/{id}``, every ``--poll`` seconds) until it ends, and checked: every
   machine ``succeeded`` with exit code 0;
4. the simulators and the controller stopped and the directory removed, even on error.

Per level and mode, over the measured rounds: ``completion`` — for each agent, from when
the POST was sent until its result reached the controller: the job's per-machine
``seconds`` (from the job's start, which is just before its 202 answer) plus the time the
POST took until its 202 (so an upper bound, by the moment between the job's start and its
answer); ``job_wall`` — from the POST until the poll saw the job ended (includes up to one
poll interval); ``post_202`` — the POST's own time (the targets resolved: the tag matched
over the organisation's machines, each machine's route); and from the simulators' records
(same clock): ``delivered`` (POST until the command reached the agent), ``on_agent`` (the
command's arrival until its result was written) and ``answered`` (POST until the result was
written). Controller CPU and RSS per round, the simulators' CPU.

Modes: ``executed`` (levels up to ``--execute-up-to``, default 1,000): each simulated agent
runs the command with the real agent's script runner (``agent.exec.Executor``: SHA-256
check, the script written to a private directory, ``/bin/sh script`` in a session of its
own, CommandStarted, CommandResult with the real exit code): every agent's process runs on
this one machine, all at once. ``answered`` (larger levels, and for comparison the executed
levels too unless ``--no-compare``): the SHA-256 is checked and CommandStarted and
CommandResult(exit 0) are sent without starting a process. Targets: 1,000 agents, p99
completion < 2 s (executed); 10,000 agents, every round's job done < 10 s (answered).

    .venv/bin/python bench/fanout_bench.py [--levels 1000,10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CpuMeter,
    exit_on_sigterm,
    finish,
    percentiles,
    proc_figures,
    progress,
)
from sim_exec import ExecFleet  # noqa: E402

TAGS = {"bench": "fanout"}
SELECTOR = "tag:bench=fanout"
COMMAND = "true"
TARGET_1K_P99_S = 2.0
TARGET_10K_WALL_S = 10.0
RUNDECK_1K_S = 52.0  # Rundeck, 1,000 hosts over SSH (the comparison)


class MachineCpu:
    """The whole machine's CPU between two points (all cores, from /proc/stat) and how much
    of it was not the benchmark's (controller, simulators and what they started, this
    process): other work on a shared machine skews the figures, the results say how much."""

    def __init__(self, pids: list[int]) -> None:
        import os

        self.pids = [*pids, os.getpid()]
        self.t0 = time.perf_counter()
        self.busy0 = self._busy()
        self.ours0 = self._ours()
        self.load = [round(x, 2) for x in os.getloadavg()]

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))

    def _ours(self) -> float:
        import psutil

        total = 0.0
        for pid in self.pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def read(self) -> dict[str, Any]:
        import os

        wall = time.perf_counter() - self.t0
        busy = self._busy() - self.busy0
        ours = self._ours() - self.ours0
        cores = os.cpu_count() or 1
        return {"wall_s": round(wall, 3), "busy_cpu_s": round(busy, 2),
                "ours_cpu_s": round(ours, 2), "others_cpu_s": round(max(0.0, busy - ours), 2),
                "busy_pct_of_machine": round(100 * busy / (wall * cores), 1) if wall else 0.0,
                "loadavg_before": self.load}


def run_round(fleet: ExecFleet, api: Any, level: int, mode: str, poll: float,
              timeout: float) -> dict[str, Any]:
    """One POST /api/v2/commands on the level's agents, polled until the job ends."""
    pool = fleet.pool
    assert pool is not None
    pool.ask("commands")  # clear the records
    pool.ask("mode", {"execute": mode == "executed"})
    pid = fleet.pid
    cpu = CpuMeter(pid)
    sims = [CpuMeter(p) for p in pool.pids()]
    machine = MachineCpu([pid, *pool.pids()])
    t_post = time.time()
    p0 = time.perf_counter()
    r = api.post("/api/v2/commands", {"command": COMMAND, "machines": [SELECTOR]})
    post_s = time.perf_counter() - p0
    if r.status != 202:
        raise RuntimeError(f"POST /api/v2/commands answered {r.status}: {r.body}")
    job_id = r.body["job_id"]
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        g = api.get(f"/api/v2/jobs/{job_id}")
        polls += 1
        if g.status != 200:
            raise RuntimeError(f"GET /api/v2/jobs/{job_id} answered {g.status}: {g.body}")
        job = g.body["data"]
        if job["status"] not in ("queued", "running"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the job did not end in {timeout:.0f} s: {job.get('progress')}")
        time.sleep(poll)
    wall_s = time.perf_counter() - p0
    ctl_cpu = cpu.read()
    ctl = proc_figures(pid)
    sims_cpu = round(sum(s.read()["cpu_pct_of_one_core"] for s in sims), 1)
    machine_cpu = machine.read()
    targets = (job.get("result") or {}).get("targets") or []
    statuses: dict[str, int] = {}
    for t in targets:
        statuses[t.get("status", "?")] = statuses.get(t.get("status", "?"), 0) + 1
    ok = [t for t in targets if t.get("status") == "succeeded" and t.get("exit_code") == 0]
    completion = [post_s + float(t["seconds"]) for t in targets if t.get("seconds") is not None]
    # the simulators' records of this command (one command id per round)
    replies = pool.ask("commands")
    rows = [row for rep in replies for rows in rep["commands"].values() for row in rows]
    delivered = [row[0] - t_post for row in rows]
    done_rows = [row for row in rows if row[2]]
    on_agent = [row[2] - row[0] for row in done_rows]
    answered = [row[2] - t_post for row in done_rows]
    errors = sorted({row[4] for row in rows if row[4]})[:5]
    failed = [t for t in targets if t.get("status") != "succeeded"][:5]
    return {
        "job": job_id, "status": job["status"], "machines": len(targets),
        "succeeded_exit_0": len(ok), "statuses": statuses,
        "failed_examples": [{k: t.get(k) for k in ("name", "status", "exit_code", "error")}
                            for t in failed],
        "post_202_s": round(post_s, 4), "job_wall_s": round(wall_s, 4), "polls": polls,
        "last_result_s": round(max(completion), 4) if completion else None,
        "completion_s": completion,
        "agent_records": len(rows), "agent_errors": errors,
        "delivered_s": delivered, "on_agent_s": on_agent, "answered_s": answered,
        "controller_cpu": ctl_cpu, "controller_rss_mib": ctl.get("rss_mib"),
        "simulators_cpu_pct_of_one_core": sims_cpu, "machine_cpu": machine_cpu,
    }


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles over every agent of the measured rounds, and the rounds' own figures."""
    def pooled(key: str) -> dict[str, float]:
        return percentiles([x for r in rounds for x in r[key]])

    return {
        "rounds": len(rounds),
        "completion": pooled("completion_s"),
        "completion_p99_ms_per_round": [percentiles(r["completion_s"]).get("p99_ms")
                                        for r in rounds],
        "job_wall_s": [r["job_wall_s"] for r in rounds],
        "job_wall_max_s": max(r["job_wall_s"] for r in rounds),
        "job_wall_median_s": sorted(r["job_wall_s"] for r in rounds)[len(rounds) // 2],
        "last_result_s": [r["last_result_s"] for r in rounds],
        "post_202_s": [r["post_202_s"] for r in rounds],
        "delivered": pooled("delivered_s"),
        "on_agent": pooled("on_agent_s"),
        "answered": pooled("answered_s"),
        "all_succeeded": all(r["succeeded_exit_0"] == r["machines"] and r["status"] == "succeeded"
                             for r in rounds),
        "succeeded_exit_0": [r["succeeded_exit_0"] for r in rounds],
        "controller_cpu_s": [r["controller_cpu"]["cpu_s"] for r in rounds],
        "controller_cpu_pct_of_one_core": [r["controller_cpu"]["cpu_pct_of_one_core"]
                                           for r in rounds],
        "controller_rss_mib": [r["controller_rss_mib"] for r in rounds],
        "simulators_cpu_pct_of_one_core": [r["simulators_cpu_pct_of_one_core"] for r in rounds],
        "others_cpu_s": [r["machine_cpu"]["others_cpu_s"] for r in rounds],
        "machine_busy_pct": [r["machine_cpu"]["busy_pct_of_machine"] for r in rounds],
    }


def slim(r: dict[str, Any]) -> dict[str, Any]:
    """A round without its per-agent lists (kept as percentiles)."""
    out = {k: v for k, v in r.items() if not k.endswith("_s") or not isinstance(v, list)}
    for k in ("completion_s", "delivered_s", "on_agent_s", "answered_s"):
        out[k.removesuffix("_s")] = percentiles(r[k])
    return out


def measure_level(fleet: ExecFleet, api: Any, level: int, enrolled: list[int],
                  args: argparse.Namespace) -> dict[str, Any]:
    pool = fleet.pool
    assert pool is not None
    out: dict[str, Any] = {"agents": level}
    # enrol the level's new agents (each simulator its share), then connect them
    total = sum(enrolled)
    if level > total:
        from common import split

        want = split(level, args.workers)
        more = [max(0, w - e) for w, e in zip(want, enrolled, strict=True)]
        progress(f"level {level:,}: enrolling {sum(more):,} more agents")
        t0 = time.perf_counter()
        replies = fleet.enrol_each(more)
        enrolled[:] = [r["enrolled"] for r in replies]
        out["enrol"] = {"agents": sum(more), "seconds": round(time.perf_counter() - t0, 2),
                        "errors": [e for r in replies for e in r["errors"]][:5]}
        if sum(enrolled) < level:
            raise RuntimeError(f"only {sum(enrolled)} agents enrolled: {out['enrol']['errors']}")
    progress(f"level {level:,}: connecting (each agent its own mTLS channel and stream)")
    t0 = time.perf_counter()
    replies = fleet.connect(enrolled, args.connect_timeout, args.ramp_concurrency)
    up = sum(r["up"] for r in replies)
    out["connect"] = {"seconds": round(time.perf_counter() - t0, 2), "up": up,
                      "errors": sorted({e for r in replies for e in r["errors"]})[:5]}
    progress(f"level {level:,}: {up:,} up after {out['connect']['seconds']} s")
    if up < level:
        out["broke"] = f"only {up:,} of {level:,} agents connected"
        return out
    if args.warmup > 0:
        progress(f"level {level:,}: warm-up {args.warmup:.0f} s (first metric batches)")
        time.sleep(args.warmup)
    out["controller_before"] = proc_figures(fleet.pid)
    modes = ["executed"] if level <= args.execute_up_to else []
    if not modes or not args.no_compare:
        modes.append("answered")
    out["modes"] = {}
    for mode in modes:
        progress(f"level {level:,} ({mode}): warm-up round")
        warm = run_round(fleet, api, level, mode, args.poll, args.job_timeout)
        rounds = []
        for i in range(args.rounds):
            time.sleep(args.pause)
            r = run_round(fleet, api, level, mode, args.poll, args.job_timeout)
            comp = percentiles(r["completion_s"])
            progress(f"level {level:,} ({mode}) round {i + 1}/{args.rounds}: "
                     f"{r['succeeded_exit_0']:,}/{r['machines']:,} ok; completion p50 "
                     f"{comp.get('p50_ms')} ms p99 {comp.get('p99_ms')} ms max "
                     f"{comp.get('max_ms')} ms; job done after {r['job_wall_s']:.3f} s "
                     f"(POST {r['post_202_s'] * 1000:.0f} ms); controller "
                     f"{r['controller_cpu']['cpu_s']} CPU-s; machine busy "
                     f"{r['machine_cpu']['busy_pct_of_machine']} %, other processes "
                     f"{r['machine_cpu']['others_cpu_s']} CPU-s")
            rounds.append(r)
        out["modes"][mode] = {"warmup_round": slim(warm), **summarise_rounds(rounds),
                              "each_round": [slim(r) for r in rounds]}
    out["controller_after"] = proc_figures(fleet.pid)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    top = levels[-1]
    env = dict(kv.split("=", 1) for kv in args.controller_env)
    sim_cfg = {"interval": args.interval, "samples": 100, "in_flight": 32, "compact": True,
               "probe_every": 0}
    fleet = ExecFleet("overcast-fanout-bench-", args.workers, sim_cfg, env)
    out: dict[str, Any] = {
        "params": {"levels": levels, "rounds": args.rounds, "workers": args.workers,
                   "command": COMMAND, "machines": [SELECTOR], "metric_interval_s": args.interval,
                   "execute_up_to": args.execute_up_to, "compare_answered": not args.no_compare,
                   "poll_s": args.poll, "warmup_s": args.warmup, "controller_env": env,
                   "nofile_limit": list(fleet.nofile)},
        "modes": {"executed": "each simulated agent runs the command with agent.exec.Executor "
                              "(the real agent's runner: a /bin/sh process per agent, all on "
                              "this machine)",
                  "answered": "the SHA-256 is checked, CommandStarted and CommandResult(exit 0) "
                              "sent without starting a process"},
        "levels": {}}
    with fleet:
        progress("creating the admin (overcast adduser, offline), starting the controller")
        fleet.start_controller()
        api = fleet.controller.http(fleet.controller.token(name="fanout-bench"))
        out["controller_idle"] = proc_figures(fleet.pid)
        progress(f"starting {args.workers} simulator processes")
        fleet.start_simulators(top, TAGS)
        enrolled = [0] * args.workers
        for level in levels:
            res = measure_level(fleet, api, level, enrolled, args)
            out["levels"][str(level)] = res
            if "broke" in res:
                break
        out["total_s"] = round(time.monotonic() - started, 1)
        out["targets"] = targets(out)
    out["controller_exit_code"] = fleet.stopped.get("exit_code")
    return out


def targets(r: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    one = ((r["levels"].get("1000") or {}).get("modes") or {})
    m = one.get("executed") or one.get("answered")
    if m:
        v = m["completion"].get("p99_ms")
        t["p99_completion_s_at_1000_agents"] = {
            "target": f"< {TARGET_1K_P99_S:g} s", "value": round(v / 1000, 3) if v else None,
            "mode": "executed" if "executed" in one else "answered",
            "met": bool(v is not None and v / 1000 < TARGET_1K_P99_S and m["all_succeeded"])}
    ten = ((r["levels"].get("10000") or {}).get("modes") or {})
    m = ten.get("answered") or ten.get("executed")
    if m:
        v = m["job_wall_max_s"]
        t["job_done_s_at_10000_agents"] = {
            "target": f"< {TARGET_10K_WALL_S:g} s (every round)", "value": v,
            "mode": "answered" if "answered" in ten else "executed",
            "met": bool(v < TARGET_10K_WALL_S and m["all_succeeded"])}
    return t


def summary(r: dict[str, Any]) -> list[str]:
    lines = []
    for level, lv in r["levels"].items():
        if "broke" in lv:
            lines.append(f"{int(level):>6,} agents: BROKE: {lv['broke']}")
            continue
        for mode, m in lv["modes"].items():
            c = m["completion"]
            lines.append(
                f"{int(level):>6,} agents ({mode}): completion p50 {c['p50_ms'] / 1000:.3f} s, "
                f"p99 {c['p99_ms'] / 1000:.3f} s, max {c['max_ms'] / 1000:.3f} s; job done "
                f"median {m['job_wall_median_s']:.3f} s, worst {m['job_wall_max_s']:.3f} s "
                f"({m['rounds']} rounds, all ok: {m['all_succeeded']}); POST->202 "
                f"{1000 * max(m['post_202_s']):.0f} ms at most; delivered p99 "
                f"{m['delivered'].get('p99_ms', 0) / 1000:.3f} s; controller "
                f"{max(m['controller_cpu_s'])} CPU-s/round, RSS {max(m['controller_rss_mib'])} MiB"
                f"; other processes {max(m['others_cpu_s'])} CPU-s/round at most")
    lines.append(f"(Rundeck: {RUNDECK_1K_S:g} s for 1,000 hosts over SSH)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1000,10000", help="agent counts, comma-separated")
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds per level and mode")
    ap.add_argument("--workers", type=int, default=4, help="simulator processes")
    ap.add_argument("--interval", type=float, default=10.0,
                    help="seconds between the agents' metric batches (0: none)")
    ap.add_argument("--execute-up-to", type=int, default=1000,
                    help="levels up to this run the command for real (agent.exec)")
    ap.add_argument("--no-compare", action="store_true",
                    help="executed levels: no answered rounds for comparison")
    ap.add_argument("--warmup", type=float, default=12.0,
                    help="seconds after connecting a level (first metric batches)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between rounds")
    ap.add_argument("--poll", type=float, default=0.02, help="seconds between job polls")
    ap.add_argument("--job-timeout", type=float, default=300.0)
    ap.add_argument("--ramp-concurrency", type=int, default=64)
    ap.add_argument("--connect-timeout", type=float, default=240.0)
    ap.add_argument("--controller-env", action="append", default=[], metavar="K=V",
                    help="an extra environment variable of the controller (experiments)")
    a = ap.parse_args(argv)
    exit_on_sigterm()
    return finish("fanout", run(a), summary)


if __name__ == "__main__":
    sys.exit(main())
