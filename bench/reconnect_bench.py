"""Reconnect storm: 5,000 simulated agents connected, the controller restarted; how long until
every one is connected again.

1. a real controller (tests/support/controller.py) on a temporary data directory; 5,000
   simulated agents (4 simulator processes, each agent its own EC P-256 key, certificate from
   the real enrolment route, mutual-TLS channel and Connect stream, a ~100-sample batch every
   10 s) connected and warmed up;
2. the controller stopped with SIGTERM (``controller_shutdown_s``: until it exited; it ends
   every stream and marks each agent disconnected on its way out), then started again on the
   same data directory and ports (``controller_start_s``: until its ready line);
3. the agents reconnect as the real one does: a new channel per attempt, waits from
   ``agent.control.backoff_delays`` (exponential with full jitter from 1 s, the sequence reset
   by a session that ran), the unacknowledged batches replayed after the Welcome;
4. figures: time from SIGTERM and from "ready" until all 5,000 are connected again, the
   distribution of each agent's reconnection (from its stream's end, and from "ready"), the
   attempts it took, agents that reconnected to the stopping controller and went down again,
   agents the restarted controller marked unreachable, then 20 s of normal traffic (the store
   lag of the batches that ask for an acknowledgement at once, as in agents_scale_bench).

Writes ``bench/results/reconnect.json``. Traffic goes to 127.0.0.1 only.

    .venv/bin/python bench/reconnect_bench.py [--agents 5000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    AgentFleet,
    CpuMeter,
    SimPool,
    exit_on_sigterm,
    finish,
    merge_latencies,
    percentiles,
    proc_figures,
    progress,
    rate,
    split,
)


def outages(pool: SimPool) -> tuple[int, int, list[tuple[float, float | None, int, int]], list[str]]:
    replies = pool.ask("outages", timeout=120)
    rows = [tuple(r) for rep in replies for r in rep["rows"]]
    errors = sorted({e for rep in replies for e in rep["errors"]})
    return (sum(rep["up"] for rep in replies), sum(rep["agents"] for rep in replies),
            rows, errors)  # type: ignore[return-value]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    fleet = AgentFleet("overcast-reconnect-bench-", args.workers,
                       {"interval": 10.0, "samples": 100, "in_flight": 32})
    out: dict[str, Any] = {"params": {"agents": args.agents, "workers": args.workers,
                                      "interval_s": 10.0, "samples": 100,
                                      "wait_cap_s": args.wait_cap,
                                      "backoff": "agent.control.backoff_delays"}}
    with fleet:
        progress("starting the controller")
        fleet.start_controller()
        c = fleet.controller
        assert c.proc is not None
        fleet.start_simulators(args.agents)
        pool = fleet.pool
        assert pool is not None
        progress(f"enrolling {args.agents:,} agents")
        out["enrol_s"] = fleet.enrol(args.agents)["seconds"]
        progress(f"connecting {args.agents:,} agents")
        t0 = time.perf_counter()
        replies = fleet.connect(split(args.agents, args.workers), timeout=300)
        up = sum(r["up"] for r in replies)
        out["initial_connect"] = {"seconds": round(time.perf_counter() - t0, 1), "up": up}
        if up < args.agents:
            raise RuntimeError(f"only {up} of {args.agents} agents connected at first")
        progress(f"{up:,} up after {out['initial_connect']['seconds']} s; warm-up {args.warmup:.0f} s")
        time.sleep(args.warmup)
        out["controller_before"] = proc_figures(c.proc.pid)
        pool.ask("mark")
        pool.ask("stats", {"reset": True, "record": True})

        progress("SIGTERM to the controller")
        t_term = time.time()
        p0 = time.perf_counter()
        out["controller_exit_code"] = c.stop(timeout=args.stop_timeout)
        out["controller_shutdown_s"] = round(time.perf_counter() - p0, 2)
        if out["controller_exit_code"] != 0:
            out["shutdown_note"] = (f"exited {out['controller_exit_code']} (killed after "
                                    f"{args.stop_timeout:.0f} s?)")
        progress(f"controller exited {out['controller_exit_code']} after "
                 f"{out['controller_shutdown_s']} s; starting it again (same directory and ports)")
        p0 = time.perf_counter()
        c.start(timeout=180)
        t_ready = time.time()
        out["controller_start_s"] = round(time.perf_counter() - p0, 2)
        cpu = CpuMeter(c.proc.pid)
        progress(f"ready after {out['controller_start_s']} s; waiting for the agents")

        deadline = time.monotonic() + args.wait_cap
        all_up_at: float | None = None
        timeline: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            time.sleep(2)
            n_up, n, rows, errors = outages(pool)
            back = sum(1 for r in rows if r[1] is not None)  # up again after its outage
            timeline.append({"t_since_ready_s": round(time.time() - t_ready, 1), "up": n_up,
                             "reconnected_since_ready": back})
            if len(timeline) % 5 == 1:
                progress(f"+{timeline[-1]['t_since_ready_s']:.0f} s after ready: {n_up:,} up")
            if n_up >= n and back >= args.agents:
                all_up_at = max(r[1] for r in rows if r[1] is not None)
                break
        reconnect_cpu = cpu.read()
        n_up, n, rows, errors = outages(pool)
        # up again after its outage (a few connect just before the ready line is seen: the
        # agents' listener starts first)
        ups = [r for r in rows if r[1] is not None]
        since_down = [r[1] - r[0] for r in ups]
        since_ready = [r[1] - t_ready for r in ups]
        attempts = sorted(r[2] for r in ups)
        downs = [r[3] for r in rows]
        out.update({
            "all_reconnected": all_up_at is not None,
            "up_at_end": n_up,
            "reconnected": len(ups),
            "time_to_all_from_sigterm_s": round(all_up_at - t_term, 2) if all_up_at else None,
            "time_to_all_from_ready_s": round(all_up_at - t_ready, 2) if all_up_at else None,
            "per_agent_since_its_stream_ended": percentiles(since_down),
            "per_agent_since_ready": percentiles(since_ready),
            "failed_attempts_per_agent": {
                "mean": round(sum(attempts) / len(attempts), 2) if attempts else None,
                "max": attempts[-1] if attempts else None,
                "p50": attempts[len(attempts) // 2] if attempts else None},
            "agents_down_more_than_once": sum(1 for d in downs if d > 1),
            "never_went_down": n - len(rows),
            "timeline": timeline,
            "errors_seen": errors[:8],
            "controller_during_reconnect": {**proc_figures(c.proc.pid), "cpu": reconnect_cpu},
        })
        if all_up_at:
            progress(f"all {args.agents:,} connected again {out['time_to_all_from_sigterm_s']} s "
                     f"after SIGTERM ({out['time_to_all_from_ready_s']} s after ready)")
        else:
            progress(f"only {len(ups):,} reconnected within {args.wait_cap:.0f} s")

        # normal traffic after the storm (replayed backlog included in the first seconds)
        pool.ask("stats", {"reset": True, "record": True})
        time.sleep(args.after)
        replies = pool.ask("stats", {"reset": True, "record": False})
        acked = sum(r["acks"] for r in replies)
        out["after_storm"] = {"seconds": args.after, "ack_latency": merge_latencies(replies),
                              "store_latency": merge_latencies(replies, "store_lat_ms"),
                              "batches_acked_per_s": rate(acked, args.after),
                              "unacked_at_end": sum(r["unacked_batches"] for r in replies),
                              "controller": proc_figures(c.proc.pid)}
        log = c.log_path.read_text(errors="replace")
        out["marked_unreachable_after_grace"] = ("did not reconnect within" in log)
        out["controller_log_errors"] = sum(1 for ln in log.splitlines()
                                           if " ERROR " in ln or "Traceback" in ln)
        out["total_s"] = round(time.monotonic() - started, 1)
        v = out["time_to_all_from_sigterm_s"]
        out["targets"] = {"all_5000_reconnected": {
            "target": f"all {args.agents:,} connected again (report the time)",
            "value": v if v is not None else f"{len(ups)} of {args.agents}",
            "met": bool(all_up_at)}}
    if fleet.stopped:
        out["final_stop_exit_code"] = fleet.stopped["exit_code"]
        out["final_stop_s"] = fleet.stopped["stop_s"]
    return out


def summary(r: dict[str, Any]) -> list[str]:
    a = r["params"]["agents"]
    lines = [f"controller shutdown {r['controller_shutdown_s']} s (exit {r['controller_exit_code']}),"
             f" start {r['controller_start_s']} s"]
    if r["all_reconnected"]:
        lines.append(f"all {a:,} agents connected again {r['time_to_all_from_sigterm_s']} s after "
                     f"SIGTERM, {r['time_to_all_from_ready_s']} s after ready")
    else:
        lines.append(f"NOT all reconnected: {r['reconnected']:,} of {a:,} within "
                     f"{r['params']['wait_cap_s']:.0f} s")
    p = r["per_agent_since_ready"]
    lines.append(f"per agent after ready: p50 {p.get('p50_ms')} ms, p90 {p.get('p90_ms')} ms, max "
                 f"{p.get('max_ms')} ms; failed attempts mean {r['failed_attempts_per_agent']['mean']}"
                 f", max {r['failed_attempts_per_agent']['max']}; "
                 f"{r['agents_down_more_than_once']} agents went down more than once")
    s = r["after_storm"]
    store = s.get("store_latency") or {}
    lines.append(f"after the storm: store lag p50 {store.get('p50_ms')} ms, p99 "
                 f"{store.get('p99_ms')} ms, {s['batches_acked_per_s']} batches/s acknowledged")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds before the restart")
    ap.add_argument("--stop-timeout", type=float, default=120.0,
                    help="seconds the controller has to exit on SIGTERM before it is killed")
    ap.add_argument("--wait-cap", type=float, default=300.0,
                    help="seconds to wait for every agent after the restart")
    ap.add_argument("--after", type=float, default=20.0, help="seconds of traffic measured after")
    a = ap.parse_args(argv)
    exit_on_sigterm()
    return finish("reconnect", run(a), summary)


if __name__ == "__main__":
    sys.exit(main())
