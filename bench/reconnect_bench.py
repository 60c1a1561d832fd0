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
   agents the restarted controller marked unreachable, then 20 s of normal traffic (ack lag).

Writes ``bench/results/reconnect.json``. Traffic goes to 127.0.0.1 only.

    .venv/bin/python bench/reconnect_bench.py [--agents 5000]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    CpuMeter,
    SimPool,
    make_join_tokens,
    merge_latencies,
    percentiles,
    proc_figures,
    progress,
    raise_nofile,
    rate,
    write_result,
)

from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller  # noqa: E402


def outages(pool: SimPool) -> tuple[int, int, list[tuple[float, float | None, int, int]], list[str]]:
    replies = pool.ask("outages", timeout=120)
    rows = [tuple(r) for rep in replies for r in rep["rows"]]
    errors = sorted({e for rep in replies for e in rep["errors"]})
    return (sum(rep["up"] for rep in replies), sum(rep["agents"] for rep in replies),
            rows, errors)  # type: ignore[return-value]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="overcast-reconnect-bench-"))
    c = Controller(tmp)
    pool: SimPool | None = None
    out: dict[str, Any] = {"params": {"agents": args.agents, "workers": args.workers,
                                      "interval_s": 10.0, "samples": 100,
                                      "wait_cap_s": args.wait_cap,
                                      "backoff": "agent.control.backoff_delays"}}
    try:
        progress("starting the controller")
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
        c.start(timeout=120)
        assert c.proc is not None
        w = args.workers
        per = [args.agents // w + (1 if i < args.agents % w else 0) for i in range(w)]
        tokens = make_join_tokens(c, w, max(per) + 1)
        pool = SimPool(w, {"interval": 10.0, "samples": 100, "in_flight": 32}, tmp)
        progress(f"enrolling {args.agents:,} agents")
        t0 = time.perf_counter()
        pool.ask("enroll", [{"n": per[i], "url": c.url, "token": tokens[i]} for i in range(w)])
        out["enrol_s"] = round(time.perf_counter() - t0, 1)
        progress(f"connecting {args.agents:,} agents")
        t0 = time.perf_counter()
        replies = pool.ask("connect", [{"n": per[i], "timeout": 300} for i in range(w)],
                           timeout=400)
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
        return out
    except BaseException:
        if c.log_path.exists():
            tail = c.log_path.read_text(errors="replace").splitlines()[-30:]
            print("controller log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        if pool is not None:
            for i in range(len(pool.procs)):
                print(f"simulator {i} log (last lines):\n{pool.tail(i)}", file=sys.stderr)
        raise
    finally:
        if pool is not None:
            progress("stopping the simulators")
            pool.close()
        if c.proc is not None and c.proc.poll() is None:
            t0 = time.perf_counter()
            out["final_stop_exit_code"] = c.stop(timeout=120)
            out["final_stop_s"] = round(time.perf_counter() - t0, 1)
        shutil.rmtree(tmp, ignore_errors=True)


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
    lines.append(f"after the storm: ack lag p50 {s['ack_latency'].get('p50_ms')} ms, p99 "
                 f"{s['ack_latency'].get('p99_ms')} ms, {s['batches_acked_per_s']} batches/s")
    return lines


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


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
    signal.signal(signal.SIGTERM, _on_sigterm)
    result = run(a)
    result["summary"] = summary(result)
    path = write_result("reconnect", result)
    for line in result["summary"]:
        print("  " + line)
    print(f"  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
