"""Agents per controller: thousands of simulated agents on one real controller.

1. a temporary data directory, the admin made offline, the controller started
   (``python -m controller.cli.main controller`` through tests/support/controller.py);
2. one join token per simulator process; every simulated agent enrols through the real route
   (``POST /api/v2/agents/enroll``) with its own EC P-256 key and CSR, and gets its own
   certificate;
3. for each level (1,000, 5,000, 10,000 agents by default), the simulators open more streams
   (each agent its own mutual-TLS gRPC channel and ``AgentService.Connect`` stream: Hello,
   Welcome, then a ~100-sample MetricBatch every 10 s at a random phase in the compact form
   the real agent sends (``--v1-batches``: every sample with its metric and labels, as agents
   before it), the real agent's keepalive options), wait a warm-up (every new agent's first
   batch creates its series), then measure for a window (60 s; the top level's a whole TSDB
   rollup period, from the end of a run to the end of the next, after the first run, a
   catch-up from the start, has ended: its CPU holds one run and the time between runs, the
   steady state; the run's share comes from the controller's /metrics): the controller's
   RSS (per agent
   too), its CPU (% of one core, and milliseconds per batch), the store lag (sample time to
   the BatchAck of the batches that ask for it at once, one in ``--probe-every``: stored by
   a synced group commit) and the acknowledgement lag of all batches (the controller
   acknowledges every few batches: see controller/agents/servicer.py);
4. the simulators and the controller stopped and the directory removed, even on error;
5. for comparison, the floor (bench/grpc_floor.py): a bare grpc.aio server holding as many
   idle streams as the top level, with mutual TLS and without, and its RSS per stream.

Simulators and controller share the machine (2 cores on the test machine): their CPU is
reported too. Writes ``bench/results/agents_scale.json``. Traffic goes to 127.0.0.1 only.

    .venv/bin/python bench/agents_scale_bench.py [--levels 1000,5000,10000] [--window 60] [--top-window 600] [--no-top-period]
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
    ThreadCpuMeter,
    exit_on_sigterm,
    finish,
    merge_latencies,
    proc_figures,
    progress,
    rate,
    smaps_breakdown,
    split,
)
from grpc_floor import floor  # noqa: E402

from tests.support.controller import Controller  # noqa: E402

TARGET_AGENTS = 10_000
TARGET_RSS_MIB = 1024.0
TARGET_CPU_PCT = 50.0


def controller_log_problems(c: Controller) -> dict[str, Any]:
    try:
        lines = c.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    bad = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln or " CRITICAL " in ln]
    warn = [ln for ln in lines if " WARNING " in ln]
    return {"error_lines": len(bad), "warning_lines": len(warn), "first_errors": bad[:5],
            "log_lines": len(lines)}


ROLLUP_METRICS = {"overcast_tsdb_rollup_cpu_seconds_total": "cpu_s",
                  "overcast_tsdb_rollup_runs_total": "runs",
                  "overcast_tsdb_rollup_samples_total": "samples"}


def _metric_lines(http: Any) -> list[str]:
    """The controller's ``/metrics``, a line each (none if it did not answer)."""
    r = http.get("/metrics")
    return r.raw.decode(errors="replace").splitlines() if r.status == 200 else []


def rollup_figures(http: Any) -> dict[str, float]:
    """The controller's TSDB rollup counters (its ``/metrics``): CPU seconds, runs, samples."""
    out: dict[str, float] = {}
    for line in _metric_lines(http):
        name, _, value = line.partition(" ")
        if name in ROLLUP_METRICS:
            out[ROLLUP_METRICS[name]] = float(value)
    return out


def store_memory(http: Any) -> dict[str, float]:
    """What the controller's store (RocksDB) holds in memory, MiB by part (its ``/metrics``)."""
    return {line.split('"', 2)[1]: round(float(line.rsplit(" ", 1)[1]) / 2**20, 1)
            for line in _metric_lines(http)
            if line.startswith('overcast_store_memory_bytes{part="')}


def measure_level(fleet: AgentFleet, level: int, args: argparse.Namespace,
                  base_rss: float, deadline: float, window: float,
                  period_mode: bool = False) -> dict[str, Any]:
    c, pool = fleet.controller, fleet.pool
    assert c.proc is not None and pool is not None
    pid = c.proc.pid
    out: dict[str, Any] = {"agents": level}
    progress(f"level {level:,}: connecting (each agent its own mTLS channel and stream)")
    cpu = CpuMeter(pid)
    before = proc_figures(pid)
    t0 = time.perf_counter()
    timeout = max(30.0, min(args.connect_timeout, deadline - time.monotonic() - 30))
    replies = fleet.connect(split(level, args.workers), timeout, args.ramp_concurrency)
    ramp_s = time.perf_counter() - t0
    welcomed = sum(r["up"] for r in replies)
    out["connect"] = {"seconds": round(ramp_s, 2), "new": sum(r["new"] for r in replies),
                      "up": welcomed,
                      "connects_per_s": rate(sum(r["new"] for r in replies), ramp_s),
                      "failed_attempts": sum(r["failures"] for r in replies),
                      "errors": sorted({e for r in replies for e in r["errors"]})[:5],
                      "controller_cpu": cpu.read(), "controller_before": before,
                      "controller_after": proc_figures(pid)}
    progress(f"level {level:,}: {welcomed:,} up after {ramp_s:.1f} s "
             f"({out['connect']['connects_per_s']}/s, controller CPU "
             f"{out['connect']['controller_cpu']['cpu_pct_of_one_core']} % while connecting)")
    if c.proc.poll() is not None:
        out["broke"] = f"the controller exited ({c.proc.returncode}) while agents connected"
        return out
    if welcomed < level:
        out["broke"] = (f"only {welcomed:,} of {level:,} agents were connected after "
                        f"{ramp_s:.0f} s")

    # warm-up: every new agent sends its first batch (its series are created)
    warm = min(args.warmup, max(0.0, deadline - time.monotonic() - args.window - 30))
    progress(f"level {level:,}: warm-up {warm:.0f} s (first batches create the series)")
    time.sleep(warm)
    pool.ask("stats", {"reset": True, "record": True})
    cpu.reset()
    threads = ThreadCpuMeter(pid)
    sims = [CpuMeter(p) for p in pool.pids()]
    metrics = fleet.controller.session()
    period = period_mode and args.top_period
    if period:
        # a whole TSDB rollup period: from the end of a run (the first one, a catch-up from
        # the controller's start, is not the steady state) to the end of the next
        progress(f"level {level:,}: waiting for a TSDB rollup run to end")
        limit = deadline - window - 30
        while rollup_figures(metrics).get("runs", 0) < 1 and time.monotonic() < limit:
            time.sleep(2)
        cpu.reset()
        threads.reset()
        for m in sims:
            m.reset()
        pool.ask("stats", {"reset": True, "record": True})
    window = max(10.0, min(window, deadline - time.monotonic() - 20))
    rolled_before = rollup_figures(metrics)
    progress(f"level {level:,}: measuring for " + (
        f"a rollup period (until the next run ends, {window:.0f} s at most)" if period
        else f"{window:.0f} s"))
    rss_samples: list[float] = []
    end = time.monotonic() + window
    while time.monotonic() < end:
        time.sleep(min(5.0, max(0.0, end - time.monotonic())))
        f = proc_figures(pid)
        if not f:
            break
        rss_samples.append(f["rss_mib"])
        if period and rollup_figures(metrics).get("runs", 0) > rolled_before.get("runs", 0):
            break
    ctl_cpu = cpu.read()
    by_thread = threads.read()
    rolled = rollup_figures(metrics)
    rollups = {k: round(rolled[k] - rolled_before.get(k, 0.0), 3) for k in rolled}
    if ctl_cpu.get("wall_s"):
        rollups["cpu_pct_of_one_core"] = round(
            100 * rollups.get("cpu_s", 0.0) / ctl_cpu["wall_s"], 1)
    replies = pool.ask("stats", {"reset": True, "record": False})
    fig = proc_figures(pid, uss=True)
    fig["smaps_mib"] = smaps_breakdown(pid)
    fig["store_memory_mib"] = store_memory(metrics)
    lat = merge_latencies(replies)
    store_lat = merge_latencies(replies, "store_lat_ms")
    acked = sum(r["acks"] for r in replies)
    sent = sum(r["sent"] for r in replies)
    ack_msgs = sum(r.get("ack_msgs", 0) for r in replies)
    expected = level / args.interval * ctl_cpu["wall_s"]
    out.update({
        "controller": {**fig, "rss_max_mib": max(rss_samples, default=fig.get("rss_mib", 0)),
                       "rss_every_5s_mib": rss_samples,
                       "rss_per_agent_kib": round((fig.get("rss_mib", 0) - base_rss) * 1024 / level, 1),
                       "cpu": ctl_cpu,
                       # per OS thread name: python (the event loop), oc-io (synced writes),
                       # tsdb-compact (rollups), rocksdb:low/high (compaction/flush), grpc's
                       "cpu_by_thread_pct": by_thread,
                       "cpu_ms_per_batch": round(1000 * ctl_cpu["cpu_s"] / sent, 3) if sent else None},
        "tsdb_rollups": rollups,
        "ack_latency": lat,
        "store_latency": store_lat,
        "batches": {"sent": sent, "acked": acked, "expected": round(expected),
                    "ack_messages": ack_msgs,
                    "acked_per_s": rate(acked, ctl_cpu["wall_s"]),
                    "samples_stored_per_s": rate(acked * args.samples, ctl_cpu["wall_s"]),
                    "unacked_at_end": sum(r["unacked_batches"] for r in replies),
                    "dropped_by_spool": sum(r["dropped"] for r in replies)},
        "simulators": {"up": sum(r["up"] for r in replies),
                       "failed_attempts": sum(r["failures"] for r in replies),
                       "cpu_pct_of_one_core": round(sum(s.read()["cpu_pct_of_one_core"]
                                                        for s in sims), 1),
                       "max_rss_mib": [r["maxrss_mib"] for r in replies]},
    })
    # acknowledgements are cumulative and come every few batches: the window's count
    # lags by up to that many per agent (ACK_EVERY in controller/agents/servicer.py)
    if lat and acked < 0.8 * expected:
        out.setdefault("broke", f"the controller kept up with only {acked:,} of ~{expected:,.0f} "
                                f"batches in the window: the backlog grows")
    progress(f"level {level:,}: controller RSS {fig.get('rss_mib')} MiB "
             f"({out['controller']['rss_per_agent_kib']} KiB/agent), CPU "
             f"{ctl_cpu['cpu_pct_of_one_core']} % of a core "
             f"({out['controller']['cpu_ms_per_batch']} ms/batch; TSDB rollups "
             f"{rollups.get('cpu_pct_of_one_core')} % in {rollups.get('runs', 0):g} runs); store lag p50 "
             f"{store_lat.get('p50_ms')} ms p99 {store_lat.get('p99_ms')} ms; "
             f"{out['batches']['samples_stored_per_s']:,} samples/s; "
             f"simulators {out['simulators']['cpu_pct_of_one_core']} %; by thread "
             + ", ".join(f"{k} {v}" for k, v in list(by_thread.items())[:6]))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.max_minutes * 60
    levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    top = levels[-1]
    env = dict(kv.split("=", 1) for kv in args.controller_env)
    if args.quiet_log:
        env["OVERCAST_LOG_LEVEL"] = "warning"
    sim_cfg = {"interval": args.interval, "samples": args.samples, "in_flight": 32,
               "compact": not args.v1_batches, "probe_every": args.probe_every}
    fleet = AgentFleet("overcast-agents-bench-", args.workers, sim_cfg, env)
    out: dict[str, Any] = {"params": {"levels": levels, "workers": args.workers,
                                      "interval_s": args.interval, "samples": args.samples,
                                      "window_s": args.window, "top_window_s": args.top_window,
                                      "warmup_s": args.warmup,
                                      "ramp_concurrency": args.ramp_concurrency,
                                      "batch_form": "samples" if args.v1_batches else "compact",
                                      "probe_every": args.probe_every,
                                      "nofile_limit": list(fleet.nofile)},
                           "levels": {}}
    with fleet:
        progress("creating the admin (overcast adduser, offline), starting the controller")
        fleet.start_controller()
        c = fleet.controller
        time.sleep(2)
        out["controller_idle"] = proc_figures(fleet.pid, uss=True)
        out["params"]["controller_env"] = env
        progress(f"starting {args.workers} simulator processes")
        fleet.start_simulators(top)
        progress(f"enrolling {top:,} agents ({args.workers} at a time: one per simulator, "
                 "each its own join token; EC P-256 key + CSR each)")
        out["enrol"] = fleet.enrol(top, timeout=max(60.0, deadline - time.monotonic()))
        progress(f"enrolled {out['enrol']['agents']:,} in {out['enrol']['seconds']} s "
                 f"({out['enrol']['per_s']}/s)")
        if out["enrol"]["agents"] < top:
            raise RuntimeError(f"only {out['enrol']['agents']} agents enrolled: "
                               f"{out['enrol']['errors']}")
        time.sleep(1)
        base = proc_figures(fleet.pid, uss=True)
        out["controller_after_enrol"] = base
        for level in levels:
            if time.monotonic() > deadline - 60:
                out["levels"][str(level)] = {"agents": level,
                                             "skipped": "the time budget was spent"}
                progress(f"level {level:,}: skipped (time budget)")
                continue
            # the top level is measured over a whole TSDB rollup period (a run every
            # ROLL_EVERY s, the first FIRST_DELAY s after the start): its CPU is the steady
            # state, rollups included
            res = measure_level(fleet, level, args, base["rss_mib"], deadline,
                                args.top_window if level == top else args.window,
                                period_mode=level == top)
            res["controller_log"] = controller_log_problems(c)
            out["levels"][str(level)] = res
            if c.proc is not None and c.proc.poll() is not None:
                break
    if not args.no_floor and time.monotonic() < deadline - 60:
        progress(f"the floor: a bare grpc.aio server with {top:,} idle streams, mTLS and plain")
        out["grpc_floor"] = floor(top)
    out["total_s"] = round(time.monotonic() - started, 1)
    out["targets"] = targets(out)
    out["controller_exit_code"] = fleet.stopped.get("exit_code")
    out["controller_stop_s"] = fleet.stopped.get("stop_s")
    return out


def targets(r: dict[str, Any]) -> dict[str, Any]:
    lv = r["levels"].get(str(TARGET_AGENTS)) or {}
    ctl = lv.get("controller") or {}
    ok = bool(ctl) and "broke" not in lv
    rss_v = ctl.get("rss_mib")
    cpu_v = (ctl.get("cpu") or {}).get("cpu_pct_of_one_core")
    t = {
        "rss_mib_at_10000_agents": {"target": f"< {TARGET_RSS_MIB:.0f}", "value": rss_v,
                                    "met": ok and rss_v is not None and rss_v < TARGET_RSS_MIB},
        "cpu_pct_at_10000_agents": {"target": f"< {TARGET_CPU_PCT:.0f} % of one core",
                                    "value": cpu_v,
                                    "met": ok and cpu_v is not None and cpu_v < TARGET_CPU_PCT},
    }
    if not lv or "broke" in lv or "skipped" in lv:
        why = lv.get("broke") or lv.get("skipped") or "level not run"
        for v in t.values():
            v["note"] = why
    return t


def summary(r: dict[str, Any]) -> list[str]:
    lines = [f"enrol {r['enrol']['agents']:,} agents: {r['enrol']['seconds']} s "
             f"({r['enrol']['per_s']}/s)"]
    for level, lv in r["levels"].items():
        if "skipped" in lv:
            lines.append(f"{int(level):>6,} agents: skipped ({lv['skipped']})")
            continue
        ctl = lv.get("controller") or {}
        lat = lv.get("ack_latency") or {}
        line = (f"{int(level):>6,} agents: up {lv['connect']['up']:,} "
                f"(connect {lv['connect']['seconds']} s)")
        if ctl:
            store = lv.get("store_latency") or {}
            line += (f"; controller RSS {ctl['rss_mib']} MiB ({ctl['rss_per_agent_kib']} KiB/agent)"
                     f", CPU {ctl['cpu']['cpu_pct_of_one_core']} % "
                     f"({ctl.get('cpu_ms_per_batch')} ms/batch; TSDB rollups "
                     f"{(lv.get('tsdb_rollups') or {}).get('cpu_pct_of_one_core')} % of it); "
                     f"store lag p50 "
                     f"{store.get('p50_ms')} ms p99 {store.get('p99_ms')} ms (acked after p50 "
                     f"{lat.get('p50_ms')} ms); {lv['batches']['samples_stored_per_s']:,.0f}"
                     f" samples/s")
        if "broke" in lv:
            line += f"  BROKE: {lv['broke']}"
        lines.append(line)
    fl = r.get("grpc_floor")
    if fl:
        m, p = fl["mtls"], fl["insecure"]
        lines.append(f"floor, a bare grpc.aio server with {m['streams']:,} idle streams: mTLS "
                     f"{m['server_rss_mib']} MiB ({m['kib_per_stream']} KiB/stream), plain "
                     f"{p['server_rss_mib']} MiB ({p['kib_per_stream']} KiB/stream)")
        a = fl.get("mtls_sending")
        if a:
            lines.append(f"floor with every mTLS stream sending a batch every "
                         f"{a['batch_every_s']:g} s: {a['server_rss_mib']} MiB "
                         f"({a['kib_per_stream']} KiB/stream)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1000,5000,10000", help="agent counts, comma-separated")
    ap.add_argument("--workers", type=int, default=4, help="simulator processes")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between batches")
    ap.add_argument("--samples", type=int, default=100, help="samples per batch")
    ap.add_argument("--window", type=float, default=60.0, help="measured seconds per level")
    ap.add_argument("--top-window", type=float, default=600.0,
                    help="measured seconds at most at the top level (see --top-period)")
    ap.add_argument("--top-period", action=argparse.BooleanOptionalAction, default=True,
                    help="measure the top level over a whole TSDB rollup period: from the end "
                         "of a run (waiting for the first) to the end of the next, so its CPU "
                         "holds one run and the idle time between runs (the steady state); "
                         "--no-top-period: --top-window seconds from the warm-up's end")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds after connecting")
    ap.add_argument("--ramp-concurrency", type=int, default=64,
                    help="handshakes in flight per simulator while connecting")
    ap.add_argument("--connect-timeout", type=float, default=240.0)
    ap.add_argument("--max-minutes", type=float, default=30.0, help="time budget of the run")
    ap.add_argument("--quiet-log", action="store_true", help="controller log level warning")
    ap.add_argument("--controller-env", action="append", default=[], metavar="K=V",
                    help="an extra environment variable of the controller (experiments)")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the bare grpc.aio comparison (bench/grpc_floor.py)")
    ap.add_argument("--v1-batches", action="store_true",
                    help="send every sample with its metric and labels (agents before the "
                         "compact form) instead of the compact form")
    ap.add_argument("--probe-every", type=int, default=30,
                    help="every Nth batch of an agent asks for its acknowledgement at once "
                         "(the store lag); 0: none")
    a = ap.parse_args(argv)
    exit_on_sigterm()
    return finish("agents_scale", run(a), summary)


if __name__ == "__main__":
    sys.exit(main())
