"""Run every ``bench/*_bench.py`` (each in its own process), then print a short summary.

    .venv/bin/python bench/run.py            # all of them (what ``make bench`` runs)
    .venv/bin/python bench/run.py api        # only bench/api_bench.py

Figures go to ``bench/results/<name>.json``. Exits 1 if a benchmark crashed or wrote no
result; a missed target is reported, not an error. Installs ``wrk`` (Debian package) first
when it is missing and apt-get can; without it the API benchmark uses a Python load generator.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
BENCH_TIMEOUT = 30 * 60  # seconds for one benchmark, then it is stopped
APT_TIMEOUT = 15 * 60


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_wrk() -> str | None:
    """wrk's path, installing the Debian package if it is missing; None if it cannot be had."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        say("wrk is not installed and apt-get is not usable here: the API benchmark will use "
            "its Python load generator")
        return None
    install = [apt, "install", "-y", "-o", "DPkg::Lock::Timeout=600", "wrk"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for attempt in ("install", "update+install"):
        if attempt == "update+install":
            say("apt-get update (the install failed)")
            _run_quiet([apt, "update"], env)
        say("installing wrk: apt-get install wrk")
        if _run_quiet(install, env) == 0 and shutil.which("wrk"):
            return shutil.which("wrk")
    say("wrk could not be installed: the API benchmark will use its Python load generator")
    return None


def _run_quiet(cmd: list[str], env: dict[str, str]) -> int:
    try:
        p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=APT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        say(f"  {cmd[1]} failed: {exc}")
        return 1
    if p.returncode != 0:
        say(f"  {' '.join(cmd[:2])} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}")
    return p.returncode


def run_one(path: Path) -> int:
    """Run one benchmark, streaming its output; stop it (SIGTERM, then SIGKILL) past the
    time limit. Returns its exit code."""
    proc = subprocess.Popen([sys.executable, "-u", str(path)], cwd=str(ROOT),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        proc.send_signal(signal.SIGTERM)  # the bench tears its controller down on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()

    timer = threading.Timer(BENCH_TIMEOUT, stop)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"  {path.stem}| {line.rstrip()}", flush=True)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        raise
    finally:
        timer.cancel()
    if timed_out.is_set():
        say(f"{path.name} ran past {BENCH_TIMEOUT} s and was stopped")
        return code or 124
    return code


def describe(name: str, result: dict[str, Any]) -> list[str]:
    lines = [f"  {line}" for line in result.get("summary", [])]
    for target, t in result.get("targets", {}).items():
        lines.append(f"  target {target}: {t['value']} (want {t['target']}) -> "
                     f"{'met' if t['met'] else 'MISSED'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run the Overcast benchmarks")
    ap.add_argument("names", nargs="*", help="only these (store, api, ...)")
    ap.add_argument("--no-install", action="store_true", help="do not install wrk")
    a = ap.parse_args(argv)

    benches = sorted(BENCH.glob("*_bench.py"))
    if a.names:
        unknown = set(a.names) - {p.stem.removesuffix("_bench") for p in benches}
        if unknown:
            say(f"no such benchmark: {', '.join(sorted(unknown))}")
            return 2
        benches = [p for p in benches if p.stem.removesuffix("_bench") in a.names]
    say(f"{len(benches)} benchmark(s): {', '.join(p.name for p in benches)}; "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if not a.no_install and any(p.stem == "api_bench" for p in benches):
        ensure_wrk()

    crashed: list[str] = []
    summaries: list[str] = []
    for i, path in enumerate(benches, 1):
        name = path.stem.removesuffix("_bench")
        say(f"({i}/{len(benches)}) {path.name} ...")
        started = time.time()
        code = run_one(path)
        took = time.time() - started
        result_path = RESULTS / f"{name}.json"
        fresh = result_path.exists() and result_path.stat().st_mtime >= started
        if code != 0 or not fresh:
            why = f"exit code {code}" if code != 0 else "no fresh result file"
            say(f"({i}/{len(benches)}) {path.name} CRASHED ({why}) after {took:.0f} s")
            crashed.append(path.name)
            continue
        say(f"({i}/{len(benches)}) {path.name} done in {took:.0f} s -> {result_path.relative_to(ROOT)}")
        summaries.append(f"{name}:")
        summaries.extend(describe(name, json.loads(result_path.read_text())))

    print()
    say("summary")
    for line in summaries:
        print(line)
    if crashed:
        say(f"crashed: {', '.join(crashed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
