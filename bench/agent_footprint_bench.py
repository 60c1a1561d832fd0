"""Agent footprint: memory and CPU of one idle, real agent over five minutes.

1. a real controller (tests/support/controller.py) on a temporary data directory; an admin,
   a join token (``POST /api/v2/agents/tokens`` with the session's CSRF header);
2. the real agent enrolled by its own command line (``--enrol-only``, the CA pinned by the
   fingerprint the controller prints);
3. the floor, for comparison: a bare process that imports grpcio and the agent's protocol
   modules and opens one mutual-TLS ``Connect`` stream with the agent's credentials (Hello,
   Welcome), then idles: its RSS and USS after 10 s;
4. the real agent started (``agent.main.run``) with the controller's interval (10 s), and once
   connected, sampled every 10 s for ``--duration`` seconds (300 by default) with psutil: RSS,
   USS (``memory_full_info().uss``), CPU seconds, threads, descriptors;
5. the agent stopped with SIGTERM (it must exit 0), its batches checked to be stored (a
   ``/api/v2/datapoints`` range query), the controller stopped, the directory removed.

Memory is in MiB (2^20 bytes, as ps and top count). Writes ``bench/results/agent_footprint.json``.
Traffic goes to 127.0.0.1 only.

    .venv/bin/python bench/agent_footprint_bench.py [--duration 300]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, exit_on_sigterm, finish, progress  # noqa: E402

from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller  # noqa: E402

TARGET_RSS_MIB = 40.0
TARGET_USS_MIB = 30.0
TARGET_CPU_PCT = 1.0
SAMPLE_EVERY = 10.0

AGENT_CODE = ("import sys; sys.path[:0]=[{root!r},{proto!r}]; from agent.main import add_arguments, "
              "run; import argparse; p=argparse.ArgumentParser(); add_arguments(p); "
              "sys.exit(run(p.parse_args()))")

# The floor: what any Python agent with grpcio pays for one open mTLS stream.
FLOOR_CODE = r'''
import sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/proto"]
import grpc
from overcast.agent.v1 import agent_pb2 as pb
from overcast.agent.v1 import agent_pb2_grpc as pb_grpc
import asyncio, json
from pathlib import Path

async def main():
    d = Path(sys.argv[2])
    state = json.loads((d / "agent.json").read_text())
    creds = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes(), (d / "key.pem").read_bytes(),
                                         (d / "cert.pem").read_bytes())
    async with grpc.aio.secure_channel(state["grpc_endpoint"], creds) as ch:
        call = pb_grpc.AgentServiceStub(ch).Connect()
        await call.write(pb.AgentMessage(hello=pb.Hello(agent_id=state["agent_id"], protocol_version=1)))
        first = await call.read()
        print("welcomed" if first.WhichOneof("body") == "welcome" else "not welcomed", flush=True)
        await asyncio.sleep(float(sys.argv[3]))
        call.cancel()

asyncio.run(main())
'''


def mem(pid: int) -> dict[str, Any]:
    import psutil

    p = psutil.Process(pid)
    with p.oneshot():
        full = p.memory_full_info()
        t = p.cpu_times()
        out = {"rss_mib": round(full.rss / 2**20, 2), "uss_mib": round(full.uss / 2**20, 2),
               "pss_mib": round(getattr(full, "pss", 0) / 2**20, 2),
               "cpu_s": round(t.user + t.system, 3), "threads": p.num_threads()}
        try:
            out["fds"] = p.num_fds()
        except (psutil.Error, AttributeError):
            pass
    return out


def smaps_by_file(pid: int, n: int = 15) -> list[dict[str, Any]]:
    """The process's resident memory by mapped file (anonymous memory as one line), largest
    first: Rss, Pss and Private (what only this process uses) in MiB."""
    acc: dict[str, dict[str, float]] = {}
    name = "[anon]"
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        first = line.split(None, 1)[0]
        if "-" in first and not first.endswith(":"):
            parts = line.split()
            name = parts[5] if len(parts) > 5 else "[anon]"
            if name.startswith("/"):
                name = name.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
            acc.setdefault(name, {"rss": 0.0, "pss": 0.0, "private": 0.0})
        elif first in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"):
            key = {"Rss:": "rss", "Pss:": "pss"}.get(first, "private")
            acc[name][key] += int(line.split()[1]) / 1024
    rows = sorted(acc.items(), key=lambda kv: -kv[1]["rss"])[:n]
    return [{"mapping": k, **{f"{m}_mib": round(v, 2) for m, v in d.items()}} for k, d in rows]


def agent_env(c: Controller) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERCAST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "proto")])
    return env


def measure_floor(state_dir: Path, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    script = tmp / "floor.py"
    script.write_text(FLOOR_CODE)
    p = subprocess.Popen([sys.executable, str(script), str(ROOT), str(state_dir), "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "welcomed":
            raise RuntimeError(f"the floor process was not welcomed: {line!r} "
                               f"{p.stderr.read() if p.stderr else ''}")
        time.sleep(10)
        return mem(p.pid)
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="overcast-footprint-bench-"))
    c = Controller(tmp)
    agent: subprocess.Popen[str] | None = None
    agent_log = tmp / "agent.log"
    state_dir = tmp / "agent-state"
    out: dict[str, Any] = {"params": {"duration_s": args.duration, "sample_every_s": SAMPLE_EVERY,
                                      "memory_unit": "MiB (2^20 bytes)"}}
    try:
        progress("starting the controller, making a join token")
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
        c.start(timeout=120)
        m = re.search(r"CA fingerprint (sha256:[0-9a-f]+)", c.log_path.read_text())
        if not m:
            raise RuntimeError("the controller printed no CA fingerprint")
        h = c.session()
        r = h.post("/api/v2/agents/tokens", {"uses": 1, "ttl": 3600, "name": "footprint"})
        if r.status != 201:
            raise RuntimeError(f"join token: {r.status} {r.body}")
        env = agent_env(c)
        env.update(dict(kv.split("=", 1) for kv in args.agent_env))
        out["params"]["agent_env"] = dict(kv.split("=", 1) for kv in args.agent_env)
        code = AGENT_CODE.format(root=str(ROOT), proto=str(ROOT / "proto"))
        base = [sys.executable, "-c", code, "--state-dir", str(state_dir), "--log-level", "info"]

        progress("enrolling the real agent (--enrol-only)")
        e = subprocess.run([*base, "--controller", c.url, "--token", r.body["token"],
                            "--ca-fingerprint", m.group(1), "--enrol-only"],
                           capture_output=True, text=True, env=env, timeout=120)
        if e.returncode != 0:
            raise RuntimeError(f"enrolment exited {e.returncode}: {e.stderr}")

        progress("the floor: a bare grpcio process with one mTLS stream, after 10 s")
        out["floor"] = measure_floor(state_dir, env, tmp)
        progress(f"floor: RSS {out['floor']['rss_mib']} MiB, USS {out['floor']['uss_mib']} MiB")

        progress("starting the agent")
        with open(agent_log, "w") as log:
            agent = subprocess.Popen(base, stdout=log, stderr=subprocess.STDOUT, text=True,
                                     env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        t_start = time.perf_counter()
        while "connected to" not in agent_log.read_text(errors="replace"):
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited {agent.returncode}:\n{agent_log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not connect in 60 s:\n{agent_log.read_text()}")
            time.sleep(0.1)
        out["connect_s"] = round(time.perf_counter() - t_start, 2)
        time.sleep(1)
        t0_wall = time.time()
        progress(f"connected in {out['connect_s']} s; sampling every {SAMPLE_EVERY:.0f} s for "
                 f"{args.duration:.0f} s")
        samples: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        n = int(args.duration // SAMPLE_EVERY)
        for i in range(n + 1):
            target = t0 + i * SAMPLE_EVERY
            time.sleep(max(0.0, target - time.perf_counter()))
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited {agent.returncode} during the run:\n"
                                   f"{agent_log.read_text()[-2000:]}")
            s = mem(agent.pid)
            s["t_s"] = round(time.perf_counter() - t0, 1)
            samples.append(s)
            if i % 6 == 0 or i == n:
                progress(f"t={s['t_s']:>5.0f} s  RSS {s['rss_mib']} MiB  USS {s['uss_mib']} MiB  "
                         f"CPU {s['cpu_s']} s")
        wall = samples[-1]["t_s"] - samples[0]["t_s"]
        cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"]
        per_interval = [round(100 * (b["cpu_s"] - a["cpu_s"]) / (b["t_s"] - a["t_s"]), 2)
                        for a, b in zip(samples, samples[1:], strict=False) if b["t_s"] > a["t_s"]]

        def series(k: str) -> dict[str, float]:
            v = [s[k] for s in samples]
            return {"start": v[0], "end": v[-1], "max": max(v), "min": min(v),
                    "growth": round(v[-1] - v[0], 2)}

        rss, uss = series("rss_mib"), series("uss_mib")
        out["rss_by_mapping"] = smaps_by_file(agent.pid)
        cpu_pct = round(100 * cpu / wall, 3) if wall > 0 else 0.0

        progress("stopping the agent (SIGTERM)")
        agent.send_signal(signal.SIGTERM)
        try:
            out["agent_exit_code"] = agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            out["agent_exit_code"] = agent.wait()
        out["stored_points"] = stored_points(c, t0_wall, time.time())
        log_text = agent_log.read_text(errors="replace")
        out.update({
            "samples": samples,
            "rss_mib": rss, "uss_mib": uss,
            "cpu": {"cpu_s": round(cpu, 3), "wall_s": round(wall, 1),
                    "cpu_pct_of_one_core": cpu_pct, "max_10s_pct": max(per_interval, default=0.0)},
            "threads": samples[-1].get("threads"), "fds": samples[-1].get("fds"),
            "agent_log": {"lines": len(log_text.splitlines()),
                          "warnings": log_text.count(" WARNING "),
                          "errors": log_text.count(" ERROR ")},
            "targets": {
                "rss_mib_max": {"target": f"< {TARGET_RSS_MIB:.0f}", "value": rss["max"],
                                "met": rss["max"] < TARGET_RSS_MIB},
                "uss_mib_max": {"target": f"< {TARGET_USS_MIB:.0f}", "value": uss["max"],
                                "met": uss["max"] < TARGET_USS_MIB},
                "cpu_pct_of_one_core": {"target": f"< {TARGET_CPU_PCT:.0f}", "value": cpu_pct,
                                        "met": cpu_pct < TARGET_CPU_PCT},
            },
        })
        return out
    except BaseException:
        for name, path in (("controller", c.log_path), ("agent", agent_log)):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-25:]
                print(f"{name} log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        if c.proc is not None:
            out["controller_exit_code"] = c.stop(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def stored_points(c: Controller, t0: float, t1: float) -> dict[str, Any]:
    """How many points of the agent's cpu_usage_idle{cpu="cpu-total"} the controller stored
    during the run (a range query, 10 s steps): about one per interval."""
    token = c.token(name="footprint-read")
    q = urllib.parse.urlencode({"query": 'cpu_usage_idle{cpu="cpu-total"}', "start": f"{t0:.3f}",
                                "end": f"{t1:.3f}", "step": "10s"})
    r = c.http(token).get(f"/api/v2/datapoints?{q}")
    if r.status != 200:
        return {"error": f"{r.status}: {str(r.body)[:200]}"}
    result = r.body["data"]["data"]["result"]
    return {"series": len(result), "points": sum(len(s["values"]) for s in result),
            "expected_about": int((t1 - t0) // 10)}


def summary(r: dict[str, Any]) -> list[str]:
    t = r["targets"]
    yes = {True: "MET", False: "MISSED"}
    return [
        f"idle agent, {r['params']['duration_s']:.0f} s: RSS {r['rss_mib']['start']} -> "
        f"{r['rss_mib']['end']} MiB (max {r['rss_mib']['max']}, growth "
        f"{r['rss_mib']['growth']})  [target < {TARGET_RSS_MIB:.0f}: {yes[t['rss_mib_max']['met']]}]",
        f"USS {r['uss_mib']['start']} -> {r['uss_mib']['end']} MiB (max {r['uss_mib']['max']}, "
        f"growth {r['uss_mib']['growth']})  [target < {TARGET_USS_MIB:.0f}: "
        f"{yes[t['uss_mib_max']['met']]}]",
        f"CPU {r['cpu']['cpu_pct_of_one_core']} % of one core (max over 10 s "
        f"{r['cpu']['max_10s_pct']} %)  [target < {TARGET_CPU_PCT:.0f} %: "
        f"{yes[t['cpu_pct_of_one_core']['met']]}]",
        f"floor (grpcio + one mTLS stream, nothing else): RSS {r['floor']['rss_mib']} MiB, "
        f"USS {r['floor']['uss_mib']} MiB",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds sampled (every 10 s)")
    ap.add_argument("--agent-env", action="append", default=[], metavar="K=V",
                    help="an extra environment variable of the agent (experiments)")
    a = ap.parse_args(argv)
    exit_on_sigterm()
    return finish("agent_footprint", run(a), summary)


if __name__ == "__main__":
    sys.exit(main())
