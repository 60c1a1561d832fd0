"""API benchmark: a real controller subprocess over 100,000 stored machines.

1. a temporary data directory; the admin made with ``overcast adduser`` (offline);
2. 100,000 machine documents of the admin's organisation written straight into the store, in
   batches, while no controller runs;
3. the controller started (``python -m controller.cli.main controller``), an API token made
   (session login, then POST /api/v2/auth/tokens with the CSRF header);
4. latency of ``GET /api/v2/machines?limit=100`` (sequential, one kept-alive connection), and
   apart from the target: a deep page (``start=50000``) and a search (``search=state:running``);
5. requests per second of ``GET /api/v2/auth`` with the token, from a separate load generator
   (wrk when installed, else a Python aiohttp client in a subprocess);
6. the controller's RSS; the controller stopped and the directory removed, even on error.

Writes ``bench/results/api.json``. Traffic goes to 127.0.0.1 only.

    .venv/bin/python bench/api_bench.py [--machines 100000] [--duration 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import exit_on_sigterm, finish, machine_doc, percentiles, progress, rate  # noqa: E402

from controller.machines.model import MACHINE  # noqa: E402
from controller.store import Batch, open_store  # noqa: E402
from controller.store.docs import dump  # noqa: E402
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller  # noqa: E402

TARGET_LIST_P50_MS = 50.0
TARGET_AUTH_RPS = 3000.0
HOST = "127.0.0.1"  # the only address this benchmark sends traffic to


# ---- setup ---------------------------------------------------------------------------------

def seed_machines(data_dir: Path, org: str, n: int, batch_size: int = 1000) -> dict[str, Any]:
    rng = random.Random(42)
    store = open_store(data_dir / "store")
    t0 = time.perf_counter()
    states: dict[str, int] = {}
    total_bytes = 0
    try:
        for start in range(0, n, batch_size):
            b = Batch()
            for i in range(start, min(n, start + batch_size)):
                mid, doc = machine_doc(i, org, rng)
                states[doc["state"]] = states.get(doc["state"], 0) + 1
                raw = dump(MACHINE, doc)
                total_bytes += len(raw)
                b.put(f"machine/{org}/{mid}", raw)
            store.write(b)
        store.flush()
    finally:
        store.close()
    s = time.perf_counter() - t0
    return {"machines": n, "seconds": round(s, 2), "docs_per_s": rate(n, s),
            "avg_doc_bytes": round(total_bytes / max(n, 1), 1), "states": states}


# ---- sequential latency --------------------------------------------------------------------

class Conn:
    """One kept-alive HTTP/1.1 connection to the controller."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.c = http.client.HTTPConnection(HOST, port, timeout=60)

    def get(self, path: str) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        try:
            self.c.request("GET", path, headers=self.headers)
            resp = self.c.getresponse()
            body = resp.read()
        except (http.client.HTTPException, OSError):
            self.c.close()
            self.c = http.client.HTTPConnection(HOST, self.port, timeout=60)
            raise
        return resp.status, body, time.perf_counter() - t0

    def close(self) -> None:
        self.c.close()


def latency(conn: Conn, path: str, *, warmup: int, n: int, cap_s: float,
            check: Any = None) -> dict[str, Any]:
    """``n`` sequential GETs of ``path`` after ``warmup`` unmeasured ones, stopping at
    ``cap_s`` seconds; each answer must be 200 (and pass ``check``)."""
    samples: list[float] = []
    deadline = time.monotonic() + cap_s
    last: Any = None
    for i in range(warmup + n):
        status, body, dt = conn.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:300]!r}")
        if i == 0 or i == warmup:
            last = json.loads(body)
            if check is not None:
                check(last)
        if i >= warmup:
            samples.append(dt)
        if time.monotonic() > deadline:
            break
    out = percentiles(samples)
    out["path"] = path
    out["requests_planned"] = n
    out["capped"] = len(samples) < n
    if isinstance(last, dict) and "meta" in last:
        out["meta"] = last["meta"]
    out["response_bytes"] = len(body)
    return out


# ---- throughput ----------------------------------------------------------------------------

WRK_LUA = """wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Accept"] = "application/json"
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return round(float(m.group(1)) * _UNITS[m.group(2)], 3)


def parse_wrk(out: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    res["requests_per_s"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    if m:
        res["requests"] = int(m.group(1))
        res["seconds"] = round(_ms(m.group(2)) / 1000, 2)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = ({k: int(v) for k, v in zip(("connect", "read", "write", "timeout"),
                                                       m.groups(), strict=True)} if m else {})
    lat: dict[str, float] = {}
    for q in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        if m:
            lat[f"p{q}_ms"] = _ms(m.group(1))
    m = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    if m:
        lat["mean_ms"], lat["max_ms"] = _ms(m.group(1)), _ms(m.group(3))
    res["latency"] = lat
    return res


def run_wrk(wrk: str, url: str, token: str, threads: int, conns: int, duration: int,
            tmp: Path) -> dict[str, Any]:
    script = tmp / "auth.lua"
    script.write_text(WRK_LUA.format(token=token))
    cmd = [wrk, f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", "--latency",
           "-s", str(script), url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk exited {p.returncode}: {p.stderr or p.stdout}")
    res = parse_wrk(p.stdout)
    res.update(tool="wrk", command=" ".join(cmd[:-3] + ["auth.lua", cmd[-1]]),
               tool_version=_wrk_version(wrk), threads=threads, connections=conns,
               duration_s=duration)
    return res


def _wrk_version(wrk: str) -> str:
    try:
        p = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


# A load generator for when wrk is not installed: runs in its own process (the controller and
# this one share the 2 cores, as wrk would), one aiohttp session, ``conns`` workers.
PY_LOADGEN = r'''
import asyncio, json, sys, time
import aiohttp

url, token, conns, duration = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

async def main():
    headers = {"Authorization": "Bearer " + token, "Accept": "application/json"}
    lat, non2xx, errors = [], 0, 0
    connector = aiohttp.TCPConnector(limit=conns)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as s:
        t0 = time.perf_counter()
        end = t0 + duration

        async def worker():
            nonlocal non2xx, errors
            while time.perf_counter() < end:
                a = time.perf_counter()
                try:
                    async with s.get(url) as r:
                        await r.read()
                        if not 200 <= r.status < 400:
                            non2xx += 1
                except Exception:
                    errors += 1
                    await asyncio.sleep(0.01)
                    continue
                lat.append(time.perf_counter() - a)

        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    pct = lambda q: round(lat[min(len(lat) - 1, max(0, int(-(-q * len(lat) // 100)) - 1))] * 1000, 3) if lat else None
    print(json.dumps({"requests": len(lat), "seconds": round(elapsed, 2),
                      "requests_per_s": round(len(lat) / elapsed, 1), "non_2xx": non2xx,
                      "errors": errors, "latency": {"p50_ms": pct(50), "p90_ms": pct(90),
                                                    "p99_ms": pct(99)}}))

asyncio.run(main())
'''


def run_py_loadgen(url: str, token: str, conns: int, duration: int, tmp: Path) -> dict[str, Any]:
    script = tmp / "loadgen.py"
    script.write_text(PY_LOADGEN)
    p = subprocess.run([sys.executable, str(script), url, token, str(conns), str(duration)],
                       capture_output=True, text=True, timeout=duration + 60)
    if p.returncode != 0:
        raise RuntimeError(f"the Python load generator exited {p.returncode}: {p.stderr}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res.update(tool="python-aiohttp", connections=conns, duration_s=duration,
               note="wrk not installed: a single-process aiohttp client, itself CPU-bound, "
                    "so the figure is a lower bound")
    return res


# ---- memory --------------------------------------------------------------------------------

def rss(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out["rss_mib" if line.startswith("VmRSS") else "peak_rss_mib"] = round(
                    int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


# ---- the run -------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="overcast-api-bench-"))
    c = Controller(tmp)
    out: dict[str, Any] = {"params": {"machines": args.machines, "requests": args.requests,
                                      "duration_s": args.duration,
                                      "connections": args.connections}}
    try:
        progress("creating the admin (overcast adduser, offline)")
        made = c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
        org = made["org"]["id"]

        progress(f"seeding {args.machines:,} machines into the store")
        out["seed"] = seed_machines(c.data_dir, org, args.machines)
        progress(f"seeded in {out['seed']['seconds']} s ({out['seed']['avg_doc_bytes']} bytes/doc)")

        progress("starting the controller")
        t0 = time.perf_counter()
        c.start(timeout=120)
        assert c.proc is not None
        out["controller_start_s"] = round(time.perf_counter() - t0, 2)
        mem: dict[str, Any] = {"after_start": rss(c.proc.pid)}
        token = c.token(name="bench")
        conn = Conn(c.http_port, token)
        try:
            def full_page(body: dict[str, Any]) -> None:
                meta = body["meta"]
                if meta["total"] != args.machines or meta["returned"] != min(100, args.machines):
                    raise RuntimeError(f"unexpected listing meta {meta}")

            progress(f"GET /api/v2/machines?limit=100 x{args.requests} (sequential)")
            lst = latency(conn, "/api/v2/machines?limit=100", warmup=30, n=args.requests,
                          cap_s=180, check=full_page)
            mem["after_list"] = rss(c.proc.pid)

            deep_start = args.machines // 2
            progress(f"GET /api/v2/machines?limit=100&start={deep_start} x{args.deep_requests}")
            deep = latency(conn, f"/api/v2/machines?limit=100&start={deep_start}", warmup=3,
                           n=args.deep_requests, cap_s=120, check=full_page)

            progress(f"GET /api/v2/machines?limit=100&search=state:running x{args.search_requests}")
            search = latency(conn, "/api/v2/machines?limit=100&search=state:running", warmup=1,
                             n=args.search_requests, cap_s=120)
            mem["after_search"] = rss(c.proc.pid)

            def token_principal(body: dict[str, Any]) -> None:
                if body["data"]["auth"] != "token" or body["data"]["user"]["email"] != ADMIN_EMAIL:
                    raise RuntimeError(f"not the admin's token: {body}")

            progress("GET /api/v2/auth x500 (sequential)")
            who = latency(conn, "/api/v2/auth", warmup=50, n=500, cap_s=60, check=token_principal)
        finally:
            conn.close()

        url = f"http://{HOST}:{c.http_port}/api/v2/auth"
        wrk = shutil.which("wrk")
        progress(f"load: GET /api/v2/auth, {args.connections} connections, {args.duration} s, "
                 f"with {'wrk' if wrk else 'a Python aiohttp client (wrk not installed)'}")
        if wrk:
            load = run_wrk(wrk, url, token, 2, args.connections, args.duration, tmp)
        else:
            load = run_py_loadgen(url, token, args.connections, args.duration, tmp)
        mem["after_load"] = rss(c.proc.pid)
        log_bytes = c.log_path.stat().st_size if c.log_path.exists() else 0

        ok_rps = load["requests_per_s"] if not load.get("non_2xx") else None
        out.update({
            "list_machines": lst,
            "list_machines_deep_page": deep,
            "list_machines_search": search,
            "auth_whoami_sequential": who,
            "auth_whoami_throughput": load,
            "controller_rss": mem,
            "controller_log_bytes": log_bytes,
            "targets": {
                "list_machines_p50_ms": {"target": f"< {TARGET_LIST_P50_MS}",
                                         "value": lst["p50_ms"],
                                         "met": lst["p50_ms"] < TARGET_LIST_P50_MS},
                "auth_requests_per_s": {"target": f">= {TARGET_AUTH_RPS:.0f}",
                                        "value": load["requests_per_s"],
                                        "met": ok_rps is not None and ok_rps >= TARGET_AUTH_RPS,
                                        "load_generator": load["tool"]},
            },
        })
        if load.get("non_2xx") or load.get("errors"):
            out["targets"]["auth_requests_per_s"]["note"] = "some answers were not 2xx: not met"
        return out
    except BaseException:
        if c.log_path.exists():
            tail = c.log_path.read_text(errors="replace").splitlines()[-40:]
            print("controller log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        if c.proc is not None:
            code = c.stop(timeout=30)
            out["controller_exit_code"] = code
        shutil.rmtree(tmp, ignore_errors=True)


def summary(r: dict[str, Any]) -> list[str]:
    t = r["targets"]
    lst, deep, search = r["list_machines"], r["list_machines_deep_page"], r["list_machines_search"]
    load = r["auth_whoami_throughput"]
    yes = {True: "MET", False: "MISSED"}
    return [
        f"list limit=100     p50 {lst['p50_ms']} ms  p90 {lst['p90_ms']} ms  p99 {lst['p99_ms']} ms"
        f"  [target p50 < {TARGET_LIST_P50_MS:.0f} ms: {yes[t['list_machines_p50_ms']['met']]}]",
        f"list start={r['params']['machines'] // 2:<7} p50 {deep['p50_ms']} ms  p90 {deep['p90_ms']} ms"
        f"  p99 {deep['p99_ms']} ms  (no target)",
        f"list search=state:running  p50 {search['p50_ms']} ms  p99 {search['p99_ms']} ms  (no target)",
        f"GET /api/v2/auth   {load['requests_per_s']:,.0f} req/s with {load['tool']} "
        f"(p50 {load['latency'].get('p50_ms')} ms, p99 {load['latency'].get('p99_ms')} ms, "
        f"non-2xx {load.get('non_2xx', 0)})  [target >= {TARGET_AUTH_RPS:.0f}/s: "
        f"{yes[t['auth_requests_per_s']['met']]}]",
        f"controller RSS     {r['controller_rss']['after_load'].get('rss_mib')} MiB "
        f"(peak {r['controller_rss']['after_load'].get('peak_rss_mib')} MiB)",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=300, help="measured list requests")
    ap.add_argument("--deep-requests", type=int, default=50)
    ap.add_argument("--search-requests", type=int, default=10)
    ap.add_argument("--duration", type=int, default=10, help="seconds of load on /api/v2/auth")
    ap.add_argument("--connections", type=int, default=50)
    a = ap.parse_args(argv)
    exit_on_sigterm()
    return finish("api", run(a), summary)


if __name__ == "__main__":
    sys.exit(main())
