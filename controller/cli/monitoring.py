"""``overcast monitoring``: enable or disable monitoring on a machine (the job's output
followed live, as ``overcast exec`` does), and custom metric sources.

Exit codes of enable/disable: 0 done; the install (or uninstall) script's own exit status
when it failed (3 join token refused, 4 CA mismatch, 5 the host cannot reach the controller,
6 platform not supported...); 255 when the machine could not be reached over SSH; 1 for any
other failure (the agent installed but not connected, say); 4 no such machine; 2 usage; and
the API's refusals as elsewhere (a 409 when monitoring is on or off already: 1)."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import output
from controller.cli.client import FAILED, OK, USAGE, CliError
from controller.cli.clouds import client, json_opt, q
from controller.cli.runs import follow


def _job(args: argparse.Namespace, action: str, body: dict[str, Any]) -> int:
    c = client()
    r = c.request("POST", f"/api/v2/machines/{q(args.machine)}/actions/{action}", body)
    job = r["data"]
    code = follow(c, job, args.json, args.detach)
    if args.detach:
        return code
    job = c.request("GET", f"/api/v2/jobs/{q(job['id'])}")["data"]
    if job.get("status") != "succeeded":
        return code or FAILED
    if not args.json:
        res = job.get("result") or {}
        if action == "enable-monitoring":
            print(f"monitoring is on for {args.machine}: agent {res.get('agent_id')} "
                  f"({res.get('state')}{', samples stored' if res.get('first_samples') else ''})")
        else:
            print(f"monitoring is off for {args.machine}: agent {res.get('agent_id')} "
                  f"{'uninstalled and ' if res.get('uninstalled') else ''}revoked")
    return OK


def cmd_enable(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    for name in ("prefix", "config_dir", "state_dir", "interval", "timeout"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.user:
        body["user"] = True
    return _job(args, "enable-monitoring", body)


def cmd_disable(args: argparse.Namespace) -> int:
    return _job(args, "disable-monitoring", {"force": True} if args.force else {})


# ---- metric sources ---------------------------------------------------------------------------
def _selectors(on: list[str], tags: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if on:
        out.append({"type": "machines", "ids": on})
    if tags:
        out.append({"type": "tags", "include": tags})
    return out


def cmd_sources_list(args: argparse.Namespace) -> int:
    data = client().request("GET", "/api/v2/metrics/sources", params={"limit": 1000})["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table(data, ["id", "name", "script_name", "selectors", "interval", "timeout"],
                     empty="no metric sources")
    return OK


def cmd_sources_add(args: argparse.Namespace) -> int:
    selectors = _selectors(args.on, args.tag)
    if not selectors:
        raise CliError("say which machines run it: --on MACHINE_ID and/or --tag KEY=VALUE", USAGE)
    body: dict[str, Any] = {"name": args.name, "script": args.script, "selectors": selectors}
    if args.interval is not None:
        body["interval"] = args.interval
    if args.timeout is not None:
        body["timeout"] = args.timeout
    doc = client().request("POST", "/api/v2/metrics/sources", body)["data"]
    if args.json:
        output.emit_json(doc)
    else:
        print(f"added metric source {doc['id']} ({doc['name']})")
    return OK


def cmd_sources_show(args: argparse.Namespace) -> int:
    doc = client().request("GET", f"/api/v2/metrics/sources/{q(args.id)}")["data"]
    if args.json:
        output.emit_json(doc)
        return OK
    output.fields(doc, ["id", "name", "script", "script_name", "selectors", "interval",
                        "timeout", "machines", "created", "created_by"])
    for s in doc.get("status") or []:
        what = s.get("error") or f"{s.get('samples')} samples"
        if s.get("bad_line_count"):
            what += f"; {s['bad_line_count']} bad line(s): " + "; ".join(s.get("bad_lines") or [])
        print(f"{s['machine']}: {what} (at {s.get('time')})")
    return OK


def cmd_sources_rm(args: argparse.Namespace) -> int:
    c = client()
    for ref in args.ids:
        c.request("DELETE", f"/api/v2/metrics/sources/{q(ref)}")
        if not args.json:
            print(f"deleted metric source {ref}")
    return OK


def register(sub: Any) -> None:
    p = sub.add_parser("monitoring", help="enable or disable monitoring on machines; custom "
                                          "metric sources")
    msub = p.add_subparsers(dest="monitoring_command", metavar="SUBCOMMAND", required=True)
    c = msub.add_parser("enable", help="install the agent on a machine over SSH (with its key) "
                                       "and follow the install's output")
    c.add_argument("machine", metavar="MACHINE", help="id or name")
    c.add_argument("--user", action="store_true",
                   help="run the agent as the unprivileged user overcast-agent")
    for flag in ("--prefix", "--config-dir", "--state-dir"):
        c.add_argument(flag, metavar="DIR", help="the install script's option of that name")
    c.add_argument("--interval", type=int, metavar="SECONDS", help="seconds between samples")
    c.add_argument("--timeout", type=int, metavar="SECONDS",
                   help="seconds the install may take (default 900)")
    c.add_argument("--detach", action="store_true", help="print the job id and return")
    json_opt(c)
    c.set_defaults(func=cmd_enable)
    c = msub.add_parser("disable", help="uninstall the machine's agent and revoke it")
    c.add_argument("machine", metavar="MACHINE", help="id or name")
    c.add_argument("--force", action="store_true",
                   help="revoke the agent even when the host cannot be reached")
    c.add_argument("--detach", action="store_true", help="print the job id and return")
    json_opt(c)
    c.set_defaults(func=cmd_disable)

    s = msub.add_parser("sources", help="custom metric sources: scripts the agents run")
    ssub = s.add_subparsers(dest="sources_command", metavar="SUBCOMMAND", required=True)
    c = ssub.add_parser("list", help="list metric sources")
    json_opt(c)
    c.set_defaults(func=cmd_sources_list)
    c = ssub.add_parser("add", help="add a metric source")
    c.add_argument("name", help="its name (the source label of its samples)")
    c.add_argument("--script", required=True, help="a script of the library (id or name)")
    c.add_argument("--on", action="append", default=[], metavar="MACHINE_ID",
                   help="a machine that runs it (repeat for more)")
    c.add_argument("--tag", action="append", default=[], metavar="KEY[=VALUE]",
                   help="machines with this tag run it (repeat: all of them)")
    c.add_argument("--interval", type=int, metavar="SECONDS",
                   help="seconds between runs (default: the agent's metric interval)")
    c.add_argument("--timeout", type=int, metavar="SECONDS", help="default 10")
    json_opt(c)
    c.set_defaults(func=cmd_sources_add)
    c = ssub.add_parser("show", help="a source, its machines and their last reports")
    c.add_argument("id", metavar="SOURCE", help="id or name")
    json_opt(c)
    c.set_defaults(func=cmd_sources_show)
    c = ssub.add_parser("rm", help="delete metric sources")
    c.add_argument("ids", nargs="+", metavar="SOURCE")
    json_opt(c)
    c.set_defaults(func=cmd_sources_rm)
