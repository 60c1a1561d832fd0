"""``overcast exec``, ``overcast scripts run``, ``overcast jobs cancel|output``: run on many
machines and follow the output live, each line prefixed by its machine when there are
several; the exit status is the worst machine's (255 for one that could not run, as ssh)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

from controller.cli import output
from controller.cli.client import FAILED, OK, USAGE, Client, CliError, warn
from controller.cli.clouds import client, json_opt, q

POLL = 0.3  # seconds between reads of a running job's output
TERMINAL = ("succeeded", "failed")


def _env(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs:
        name, eq, value = p.partition("=")
        if not eq or not name:
            raise CliError(f"--env takes NAME=value, not {p!r}", USAGE)
        out[name] = value
    return out


def _body(args: argparse.Namespace) -> dict[str, Any]:
    if not args.on:
        raise CliError("say where to run: --on MACHINE (an id, a name or tag:key=value)", USAGE)
    body: dict[str, Any] = {"machines": args.on}
    if args.env:
        body["env"] = _env(args.env)
    if args.su:
        body["su"] = True
    if args.timeout:
        body["timeout"] = args.timeout
    return body


class _Printer:
    """Prints a job's output as it comes: whole lines, prefixed by machine when asked."""

    def __init__(self, prefix: bool) -> None:
        self.prefix = prefix
        self.after = 0      # the output read so far (the API's next)
        self.partial: dict[tuple[str, str], str] = {}

    def fetch(self, c: Client, jid: str, machine: str = "") -> None:
        """Read and print what came since the last call."""
        r = c.request("GET", f"/api/v2/jobs/{q(jid)}/output",
                      params={"after": self.after, "machine": machine})
        self.after = int(r.get("next") or self.after)
        for o in r["data"]:
            for stream, text in o.get("chunks") or []:
                self._write(o.get("name") or o["machine"], stream, text)

    def _write(self, name: str, stream: str, text: str) -> None:
        f = sys.stderr if stream == "stderr" else sys.stdout
        if not self.prefix:
            f.write(text)
            f.flush()
            return
        buf = self.partial.get((name, stream), "") + text
        *lines, rest = buf.split("\n")
        self.partial[(name, stream)] = rest
        for line in lines:
            f.write(f"{name} | {line}\n")
        f.flush()

    def finish(self) -> None:
        for (name, stream), rest in self.partial.items():
            if rest:
                f = sys.stderr if stream == "stderr" else sys.stdout
                f.write(f"{name} | {rest}\n")
        self.partial.clear()
        sys.stdout.flush()


def follow(c: Client, job: dict[str, Any], as_json: bool, detach: bool) -> int:
    """Follow a run until it ends; Ctrl-C cancels it (a second one stops following)."""
    jid = job["id"]
    if detach:
        if as_json:
            output.emit_json(job)
        else:
            print(f"started job {jid}: follow it with 'overcast jobs output {jid}'")
        return OK
    count = int((job.get("params") or {}).get("count") or 1)
    printer = _Printer(prefix=count > 1)
    cancelled = False

    def interrupt(_sig: int, _frame: Any) -> None:
        nonlocal cancelled
        if cancelled:
            raise KeyboardInterrupt
        cancelled = True
        warn(f"cancelling job {jid} (Ctrl-C again to stop waiting)")
        try:
            c.request("POST", f"/api/v2/jobs/{q(jid)}/cancel")
        except CliError as exc:
            warn(exc.message)

    old = signal.signal(signal.SIGINT, interrupt)
    try:
        while True:
            job = c.request("GET", f"/api/v2/jobs/{q(jid)}")["data"]
            if not as_json:
                printer.fetch(c, jid)  # after the job: a job that ended has all its output
            if job.get("status") in TERMINAL:
                break
            time.sleep(POLL)
    finally:
        signal.signal(signal.SIGINT, old)
        printer.finish()
    result = job.get("result") or {}
    if as_json:
        output.emit_json(job)
    else:
        for t in result.get("targets") or []:
            if t.get("status") != "succeeded":
                why = t.get("error") or f"exit status {t.get('exit_code')}"
                if t.get("timed_out"):
                    why = "timed out: " + why
                print(f"overcast: {t.get('name')}: {why}", file=sys.stderr)
        if not result and job.get("error"):
            print(f"overcast: {job['error'].get('message')}", file=sys.stderr)
    if "exit_code" in result:
        return int(result["exit_code"])
    return FAILED if job.get("status") == "failed" else OK


def cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("give the command after --: overcast exec --on M -- uptime", USAGE)
    # one argument is a shell command line as typed; several are words to quote
    import shlex

    text = command[0] if len(command) == 1 else " ".join(shlex.quote(w) for w in command)
    c = client()
    r = c.request("POST", "/api/v2/commands", dict(_body(args), command=text))
    return follow(c, r["data"], args.json, args.detach)


def cmd_run(args: argparse.Namespace) -> int:
    body = _body(args)
    if args.params:
        body["params"] = args.params
    c = client()
    r = c.request("POST", f"/api/v2/scripts/{q(args.script)}", body)
    return follow(c, r["data"], args.json, args.detach)


def cmd_cancel(args: argparse.Namespace) -> int:
    r = client().request("POST", f"/api/v2/jobs/{q(args.id)}/cancel")["data"]
    if args.json:
        output.emit_json(r)
    else:
        print(f"cancelling job {r['id']}: every process it started is being killed")
    return OK


def cmd_output(args: argparse.Namespace) -> int:
    c = client()
    if args.json:
        r = c.request("GET", f"/api/v2/jobs/{q(args.id)}/output", params={"machine": args.machine})
        output.emit_json(r["data"])
        return OK
    job = c.request("GET", f"/api/v2/jobs/{q(args.id)}")["data"]
    if args.follow:
        return follow(c, job, False, False)
    several = int((job.get("params") or {}).get("count") or 1) > 1 and not args.machine
    printer = _Printer(prefix=several)
    printer.fetch(c, args.id, args.machine or "")
    printer.finish()
    return OK


def _run_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on", action="append", metavar="MACHINE", default=[],
                   help="where: a machine id or name, or tag:key=value (repeat for more)")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", default=[],
                   help="environment for the run (values are never stored or logged)")
    p.add_argument("--su", action="store_true", help="run as root (sudo -n over SSH)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="kill the run (its whole process group) after this long")
    p.add_argument("--detach", action="store_true",
                   help="start it and print the job id, without following the output")
    json_opt(p)


def add_run(g: Any) -> None:
    """``overcast scripts run`` (registered by the scripts command group)."""
    c = g.add_parser("run", help="run a script on machines, following their output live; exit "
                                 "status: the worst machine's")
    c.add_argument("script", metavar="SCRIPT", help="id or name")
    c.add_argument("--params", help="arguments, one string as a shell would split it")
    _run_opts(c)
    c.set_defaults(func=cmd_run)


def add_job_commands(jsub: Any) -> None:
    """``overcast jobs cancel|output`` (registered by the jobs command group)."""
    c = jsub.add_parser("cancel", help="cancel a running script or command")
    c.add_argument("id")
    json_opt(c)
    c.set_defaults(func=cmd_cancel)
    c = jsub.add_parser("output", help="the output a run kept, per machine")
    c.add_argument("id")
    c.add_argument("--machine", help="only this machine's")
    c.add_argument("-f", "--follow", action="store_true", help="follow a running job")
    json_opt(c)
    c.set_defaults(func=cmd_output)


def register(sub: Any) -> None:
    p = sub.add_parser("exec", help="run a command on machines (through their agents, or SSH)",
                       description="Run a shell command on one machine or many and follow the "
                       "output; the exit status is the worst machine's (255: could not run). "
                       "Example: overcast exec --on tag:env=prod -- uptime")
    _run_opts(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    p.set_defaults(func=cmd_exec)
