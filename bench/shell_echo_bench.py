"""Shells: keystroke echo round trip and bulk output through the agent relay, on loopback.

1. a temporary data directory, the admin made offline, the controller started (through
   tests/support/controller.py: plain HTTP on 127.0.0.1) and an API token made;
2. one real agent (``python -m agent``, tests/support/agents.py: enrolled with a join token
   and the CA fingerprint, then started; metric interval 10 s) on this machine, connected to
   the controller over its mutual-TLS stream;
3. echo: ``POST /api/v2/machines/{agent's machine}/actions/ssh`` with ``command``
   ``stty raw -echo && printf <marker> && exec cat`` (the agent runs it on a pseudo-terminal,
   ``sh -c``), then the WebSocket (aiohttp's client) at the answer's ``location``; once the
   marker is seen, one keystroke at a time (a binary frame of one byte) and the time until
   that byte comes back as output (``--warmup`` keystrokes unmeasured, then
   ``--keystrokes``). The terminal is raw and does not echo: what comes back went through
   ``cat`` on the host, as in a full-screen program or a line editor that echoes itself:
   browser -> controller -> agent stream -> pty -> cat -> pty -> agent -> controller ->
   WebSocket. For comparison, ``local_pty_floor``: the same loop on a local pseudo-terminal
   (no controller, no agent);
4. bulk: a file of ``--bulk-mb`` MB (10^6 bytes) of random printable characters in lines of
   100 (99 and a newline) made in a temporary directory, and a shell asked with ``command``
   ``cat FILE``; from the WebSocket's connect until the ``{"type": "exit"}`` message, every
   output byte counted and checked: the terminal turns each newline into CR LF, so the output
   must be the file with ``\\n`` replaced by ``\\r\\n``. MB/s counts the file's bytes. The
   shell is recorded as the controller's default does (``shell_recording_max_bytes``, 64 MiB:
   ``--no-recording`` sets it to 0); the session's ``bytes_out`` and recording size are read
   back;
5. the agent and the controller stopped and the directory removed, even on error.

Target: echo p99 < 5 ms. Writes ``bench/results/shell_echo.json``.

    .venv/bin/python bench/shell_echo_bench.py [--keystrokes 2000] [--bulk-mb 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
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
from fanout_bench import MachineCpu  # noqa: E402

from tests.support.agents import AgentProc, join_token, wait_for  # noqa: E402
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http  # noqa: E402

TARGET_ECHO_P99_MS = 5.0
MARKER = b"@@overcast-bench-ready@@"
ECHO_COMMAND = f"stty raw -echo && printf '%s' {MARKER.decode()} && exec cat"
LETTERS = b"abcdefghijklmnopqrstuvwxyz0123456789"


class ShellError(Exception):
    """The shells feature did not do what the benchmark needs (the message says what)."""


class Term:
    """One shell's WebSocket: output bytes and control messages."""

    def __init__(self, session: Any, ws: Any) -> None:
        self.session = session
        self.ws = ws
        self.out = bytearray()
        self.controls: list[dict[str, Any]] = []
        self.closed = False

    async def next(self, timeout: float) -> bytes:
        """The next message: its bytes when output, b"" otherwise (a control, the close)."""
        import aiohttp

        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            return bytes(msg.data)
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                self.controls.append(json.loads(msg.data))
            except ValueError:
                self.controls.append({"type": "text?", "data": msg.data[:200]})
        else:
            self.closed = True
        return b""

    def control(self, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.controls if c.get("type") == kind), None)

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            await self.session.close()


def ask_shell(api: Http, machine: str, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post(f"/api/v2/machines/{machine}/actions/ssh", body)
    if r.status != 201:
        raise ShellError(f"POST /api/v2/machines/{{machine}}/actions/ssh answered {r.status}: "
                         f"{str(r.body)[:500]}")
    data = (r.body or {}).get("data") if isinstance(r.body, dict) else None
    if not isinstance(data, dict) or not data.get("location"):
        raise ShellError(f"the shell's answer has no data.location: {str(r.body)[:500]}")
    return data


async def connect(location: str) -> Term:
    import aiohttp

    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(location, max_msg_size=0, autoping=True)
    except Exception as exc:
        await session.close()
        raise ShellError(f"the WebSocket {location.split('?')[0]} refused: {exc}") from exc
    return Term(session, ws)


# ---- echo ---------------------------------------------------------------------------------

async def echo_phase(api: Http, machine: str, pids: dict[str, int],
                     args: argparse.Namespace) -> dict[str, Any]:
    opened = await asyncio.to_thread(ask_shell, api, machine,
                                     {"cols": 120, "rows": 40, "command": ECHO_COMMAND})
    t0 = time.perf_counter()
    term = await connect(opened["location"])
    out: dict[str, Any] = {"shell": opened["id"], "via": opened.get("via"),
                           "command": ECHO_COMMAND}
    try:
        buf = bytearray()
        deadline = time.monotonic() + 30
        while MARKER not in buf:
            if term.closed or term.control("error") or term.control("exit"):
                raise ShellError(f"the shell ended before it was ready: {term.controls} "
                                 f"{bytes(buf)[-300:]!r}")
            if time.monotonic() > deadline:
                raise ShellError(f"no {MARKER!r} within 30 s: {bytes(buf)[-300:]!r} {term.controls}")
            try:
                buf += await term.next(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                continue
        out["open_to_ready_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        machine = MachineCpu(list(pids.values()))
        lat: list[float] = []
        extra = 0
        total = args.warmup + args.keystrokes
        for i in range(total):
            ch = LETTERS[i % len(LETTERS):i % len(LETTERS) + 1]
            got = bytearray()
            t = time.perf_counter()
            await term.ws.send_bytes(ch)
            while ch not in got:
                data = await term.next(10)
                if term.closed:
                    raise ShellError(f"the shell closed during keystroke {i}: {term.controls}")
                got += data
            dt = time.perf_counter() - t
            extra += len(got) - 1
            if i >= args.warmup:
                lat.append(dt)
        out.update(keystrokes=len(lat), warmup=args.warmup, unexpected_bytes=extra,
                   echo=percentiles(lat), machine_cpu=machine.read())
    finally:
        await term.close()
    return out


def local_pty_floor(n: int, warmup: int) -> dict[str, Any]:
    """The same keystroke loop on a local pseudo-terminal: the terminal's and cat's own cost."""
    import pty
    import subprocess

    master, slave = pty.openpty()
    p = subprocess.Popen(["sh", "-c", ECHO_COMMAND], stdin=slave, stdout=slave, stderr=slave,
                         start_new_session=True)
    os.close(slave)
    try:
        buf = b""
        while MARKER not in buf:
            buf += os.read(master, 4096)
        lat = []
        for i in range(warmup + n):
            ch = LETTERS[i % len(LETTERS):i % len(LETTERS) + 1]
            t = time.perf_counter()
            os.write(master, ch)
            got = b""
            while ch not in got:
                got += os.read(master, 4096)
            if i >= warmup:
                lat.append(time.perf_counter() - t)
        return percentiles(lat)
    finally:
        p.kill()
        p.wait()
        os.close(master)


# ---- bulk ---------------------------------------------------------------------------------

def make_file(path: Path, size: int) -> tuple[bytes, int]:
    """``size`` bytes of random printable ASCII (no CR) in lines of 100; (content, newlines)."""
    table = bytes(0x21 + (i % 94) for i in range(256))  # '!'..'~'
    raw = os.urandom(size).translate(table)
    line = 99
    parts = [raw[i:i + line] for i in range(0, size, line + 1)]
    content = b"\n".join(parts)
    content = content[:size - 1] + b"\n" if len(content) >= size else content + b"\n"
    content = content[:size]
    path.write_bytes(content)
    return content, content.count(b"\n")


async def bulk_phase(api: Http, machine: str, path: Path, content: bytes, newlines: int,
                     pids: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    size = len(content)
    command = f"cat {shlex.quote(str(path))}"
    opened = await asyncio.to_thread(ask_shell, api, machine, {"cols": 120, "rows": 40,
                                                               "command": command})
    expected = size + newlines
    cpus = {name: CpuMeter(pid) for name, pid in pids.items()}
    machine = MachineCpu(list(pids.values()))
    t0 = time.perf_counter()
    term = await connect(opened["location"])
    t_conn = time.perf_counter()
    received = bytearray()
    t_first = t_last = 0.0
    frames = 0
    try:
        deadline = time.monotonic() + args.bulk_timeout
        while not term.closed and term.control("exit") is None and term.control("error") is None:
            if time.monotonic() > deadline:
                raise ShellError(f"the output did not end within {args.bulk_timeout:.0f} s "
                                 f"({len(received):,} of {expected:,} bytes)")
            try:
                data = await term.next(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                continue
            if data:
                if not t_first:
                    t_first = time.perf_counter()
                t_last = time.perf_counter()
                frames += 1
                received += data
        t_end = time.perf_counter()
    finally:
        await term.close()
    cpu = {name: m.read() for name, m in cpus.items()}
    machine_cpu = machine.read()
    exit_msg = term.control("exit")
    error_msg = term.control("error")
    exact = bytes(received) == content.replace(b"\n", b"\r\n")
    seconds = t_end - t0
    out: dict[str, Any] = {
        "shell": opened["id"], "command": command, "file_bytes": size, "newlines": newlines,
        "expected_output_bytes": expected, "received_bytes": len(received),
        "all_bytes_arrived": len(received) == expected, "output_exact": exact,
        "frames": frames, "mean_frame_bytes": round(len(received) / frames) if frames else 0,
        "exit": exit_msg, "error": error_msg,
        "connect_ms": round((t_conn - t0) * 1000, 1),
        "seconds_connect_to_exit": round(seconds, 3),
        "seconds_first_to_last_byte": round(t_last - t_first, 3) if t_first else None,
        "mb_per_s": round(size / 1e6 / seconds, 1) if seconds > 0 else None,
        "mib_per_s": round(size / 2**20 / seconds, 1) if seconds > 0 else None,
        "output_mb_per_s_first_to_last": (round(len(received) / 1e6 / (t_last - t_first), 1)
                                          if t_last > t_first else None),
        "cpu": cpu, "machine_cpu": machine_cpu,
    }
    if not exact and len(received) == expected:
        diff = next(i for i, (a, b) in enumerate(zip(received, content.replace(b"\n", b"\r\n"),
                                                     strict=True)) if a != b)
        out["first_difference_at"] = diff
    elif not exact:
        out["output_head"] = bytes(received[:200]).decode("latin-1")
    r = await asyncio.to_thread(api.get, f"/api/v2/shells/{opened['id']}")
    if r.status == 200 and isinstance(r.body, dict):
        doc = r.body.get("data") or {}
        out["session"] = {k: doc.get(k) for k in ("state", "reason", "exit_code", "bytes_in",
                                                  "bytes_out", "recorded", "recording_bytes",
                                                  "recording_truncated", "duration")}
    return out


# ---- the run ------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="overcast-shell-bench-"))
    env: dict[str, str] = {}
    if args.no_recording:
        env["OVERCAST_SHELL_RECORDING_MAX_BYTES"] = "0"
    c = Controller(tmp / "ctl", env)
    agent: AgentProc | None = None
    out: dict[str, Any] = {"params": {"keystrokes": args.keystrokes, "warmup": args.warmup,
                                      "bulk_mb": args.bulk_mb, "recording": not args.no_recording,
                                      "controller_env": env}}
    errors: list[str] = []
    try:
        progress("creating the admin (overcast adduser, offline), starting the controller")
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
        c.start(timeout=120)
        assert c.proc is not None
        h = c.session()
        api = c.http(c.token(name="shell-echo-bench"))
        progress("enrolling and starting one agent (python -m agent)")
        agent = AgentProc(c, tmp / "agent", interval=10.0)
        e = agent.enrol(str(join_token(h)["token"]))
        if e.returncode != 0:
            raise RuntimeError(f"the agent could not enrol: {e.stderr[-500:]}")
        agent.start()
        aid = agent.agent_id

        def running() -> bool:
            r = api.get(f"/api/v2/machines/{aid}")
            return r.status == 200 and (r.body.get("data") or {}).get("state") == "running"

        wait_for(running, 60, "the agent's machine running")
        assert agent.proc is not None
        pids = {"controller": c.proc.pid, "agent": agent.proc.pid}
        out["agent_idle"] = proc_figures(agent.proc.pid)

        progress(f"local pseudo-terminal floor: {args.keystrokes:,} keystrokes")
        out["local_pty_floor"] = local_pty_floor(args.keystrokes, args.warmup)
        progress(f"echo: {args.warmup} warm-up and {args.keystrokes:,} measured keystrokes "
                 "through the controller and the agent")
        try:
            out["echo"] = asyncio.run(echo_phase(api, aid, pids, args))
            e_ = out["echo"]["echo"]
            progress(f"echo: p50 {e_['p50_ms']} ms, p99 {e_['p99_ms']} ms, max {e_['max_ms']} ms"
                     f" (other processes used {out['echo']['machine_cpu']['others_cpu_s']} CPU-s "
                     f"in {out['echo']['machine_cpu']['wall_s']} s)")
        except ShellError as exc:
            errors.append(f"echo: {exc}")
            out["echo"] = {"not_run": str(exc)}
            progress(f"echo could not be measured: {exc}")

        progress(f"bulk: making a {args.bulk_mb:g} MB file of random printable text")
        path = tmp / "bulk.txt"
        content, newlines = make_file(path, int(args.bulk_mb * 1e6))
        progress(f"bulk: cat of {len(content):,} bytes through a shell")
        try:
            out["bulk"] = asyncio.run(bulk_phase(api, aid, path, content, newlines, pids, args))
            b = out["bulk"]
            progress(f"bulk: {b['received_bytes']:,} of {b['expected_output_bytes']:,} bytes "
                     f"(exact: {b['output_exact']}) in {b['seconds_connect_to_exit']} s: "
                     f"{b['mb_per_s']} MB/s; exit {b['exit']}")
        except ShellError as exc:
            errors.append(f"bulk: {exc}")
            out["bulk"] = {"not_run": str(exc)}
            progress(f"bulk could not be measured: {exc}")
        del content
        out["controller_after"] = proc_figures(c.proc.pid)
        out["agent_after"] = proc_figures(agent.proc.pid)
    except BaseException:
        for name, p in (("controller", c.log_path),
                        ("agent", agent.log_path if agent else None)):
            if p is not None and p.exists():
                tail = p.read_text(errors="replace").splitlines()[-30:]
                print(f"{name} log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        if agent is not None:
            agent.stop()
        if c.proc is not None and c.proc.poll() is None:
            out["controller_exit_code"] = c.stop(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    out["errors"] = errors
    out["targets"] = targets(out)
    return out


def targets(r: dict[str, Any]) -> dict[str, Any]:
    e = (r.get("echo") or {}).get("echo") or {}
    v = e.get("p99_ms")
    t: dict[str, Any] = {"echo_p99_ms": {"target": f"< {TARGET_ECHO_P99_MS:g}", "value": v,
                                         "met": v is not None and v < TARGET_ECHO_P99_MS}}
    if v is None:
        t["echo_p99_ms"]["note"] = (r.get("echo") or {}).get("not_run", "not measured")
    return t


def summary(r: dict[str, Any]) -> list[str]:
    lines = []
    e = r.get("echo") or {}
    if "echo" in e:
        x = e["echo"]
        f = r.get("local_pty_floor") or {}
        lines.append(f"keystroke echo ({x['n']:,} keystrokes, browser -> controller -> agent -> "
                     f"pty -> cat and back): p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms, max "
                     f"{x['max_ms']} ms (local pty alone: p50 {f.get('p50_ms')} ms, p99 "
                     f"{f.get('p99_ms')} ms)")
    else:
        lines.append(f"keystroke echo NOT MEASURED: {e.get('not_run')}")
    b = r.get("bulk") or {}
    if "mb_per_s" in b:
        lines.append(f"bulk cat of {b['file_bytes'] / 1e6:g} MB through a shell: {b['mb_per_s']} "
                     f"MB/s ({b['seconds_connect_to_exit']} s from connect to exit; "
                     f"{b['received_bytes']:,} bytes with CR LF, all arrived: "
                     f"{b['all_bytes_arrived']}, exact: {b['output_exact']}; recorded: "
                     f"{(b.get('session') or {}).get('recorded')})")
    else:
        lines.append(f"bulk output NOT MEASURED: {b.get('not_run')}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keystrokes", type=int, default=2000, help="measured keystrokes")
    ap.add_argument("--warmup", type=int, default=200, help="unmeasured keystrokes first")
    ap.add_argument("--bulk-mb", type=float, default=50.0, help="size of the file cat prints")
    ap.add_argument("--bulk-timeout", type=float, default=600.0)
    ap.add_argument("--no-recording", action="store_true",
                    help="the controller records no shell (shell_recording_max_bytes 0)")
    a = ap.parse_args(argv)
    exit_on_sigterm()
    result = run(a)
    finish("shell_echo", result, summary)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
