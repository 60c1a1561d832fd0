"""``overcast schedules``: list, show, add, edit, enable, disable, delete, and the runs of a
schedule. ``add``/``edit`` build the API's body from flags: when (``--cron``, ``--every``,
``--at``), what (``--script``, ``--command``, ``--action``, ``--notify``), on which machines
(``--machine``, ``--tag``, ``--older-than``) and the limits."""

from __future__ import annotations

import argparse
import re
from typing import Any

from controller.cli import output
from controller.cli.client import OK, USAGE, CliError
from controller.cli.clouds import client, json_opt, q

COLUMNS = ["id", "name", "when", "status", "next_run", "last_run", "total_run_count"]
HEADERS = ["id", "name", "when", "status", "next run", "last run", "runs"]
FIELDS = ["id", "name", "description", "enabled", "status", "finished_reason", "when",
          "selectors", "actions", "start_after", "expires", "max_run_count", "missed",
          "reminder", "next_run", "last_run", "total_run_count", "expiration_for", "owned_by",
          "created_by", "created"]
RUN_COLUMNS = ["seq", "scheduled_for", "trigger", "status", "machines", "failed", "reason"]
VERBS = ("start", "stop", "reboot", "destroy", "suspend", "resume")
_EVERY = re.compile(r"^(\d+)\s*(s|sec|seconds?|m|min|minutes?|h|hours?|d|days?)?$")
_PERIOD = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def when_text(w: dict[str, Any]) -> str:
    kind = w.get("schedule_type")
    if kind == "interval":
        return f"every {w.get('every')} {w.get('period')}"
    if kind == "crontab":
        tz = w.get("timezone") or "UTC"
        return f"cron {w.get('expression', '')}" + (f" ({tz})" if tz != "UTC" else "")
    return f"at {w.get('datetime', '')}"


def _row(s: dict[str, Any]) -> dict[str, Any]:
    return dict(s, when=when_text(s.get("when") or {}),
                status=s["status"] + (f" ({s['finished_reason']})" if s.get("finished_reason")
                                      else ""))


def _every(text: str) -> dict[str, Any]:
    m = _EVERY.match(text.strip().lower())
    if not m:
        raise CliError(f"--every takes a duration such as 90s, 10m, 2h or 1d, not {text!r}", USAGE)
    return {"schedule_type": "interval", "every": int(m.group(1)),
            "period": _PERIOD[(m.group(2) or "m")[0]]}


def _when(args: argparse.Namespace) -> dict[str, Any] | None:
    given = [x for x in (args.cron, args.every, args.at) if x]
    if len(given) > 1:
        raise CliError("give one of --cron, --every and --at", USAGE)
    if args.cron:
        w: dict[str, Any] = {"schedule_type": "crontab", "expression": args.cron}
    elif args.every:
        w = _every(args.every)
    elif args.at:
        w = {"schedule_type": "one_off", "datetime": args.at}
    else:
        if args.timezone:
            raise CliError("--timezone goes with --cron or --at", USAGE)
        return None
    if args.timezone:
        w["timezone"] = args.timezone
    return w


def _actions(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for verb in args.action or []:
        out.append({"action_type": verb})
    if args.script:
        out.append({"action_type": "run_script", "script_type": "existing",
                    "script": args.script, "params": args.params or ""})
    if args.command:
        out.append({"action_type": "run_script", "script_type": "inline",
                    "command": args.command, "params": args.params or ""})
    if args.params and not (args.script or args.command):
        raise CliError("--params goes with --script or --command", USAGE)
    if args.notify:
        a: dict[str, Any] = {"action_type": "notify", "emails": args.notify}
        if args.subject:
            a["subject"] = args.subject
        if args.message:
            a["message"] = args.message
        out.append(a)
    return out


def _selectors(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ids = [i.strip() for m in args.machine or [] for i in m.split(",") if i.strip()]
    if ids:
        out.append({"type": "machines", "ids": ids})
    if args.tag:
        out.append({"type": "tags", "include": args.tag})
    if args.older_than:
        out.append({"type": "age", "minutes": args.older_than})
    return out


def _body(args: argparse.Namespace, adding: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    when = _when(args)
    if when is not None:
        body["when"] = when
    elif adding:
        raise CliError("say when: --cron EXPR, --every DURATION or --at DATETIME", USAGE)
    actions = _actions(args)
    if actions:
        body["actions"] = actions
    elif adding:
        raise CliError("say what to do: --script, --command, --action or --notify", USAGE)
    selectors = _selectors(args)
    if selectors:
        body["selectors"] = selectors
    for flag, key in (("description", "description"), ("expires", "expires"),
                      ("start_after", "start_after"), ("max_runs", "max_run_count"),
                      ("missed", "missed")):
        v = getattr(args, flag)
        if v is not None:
            body[key] = v
    if args.run_now:
        body["run_immediately"] = True
    if getattr(args, "disabled", False):
        body["enabled"] = False
    return body


def _show(s: dict[str, Any], as_json: bool) -> int:
    if as_json:
        output.emit_json(s)
    else:
        shown = dict(s, when=when_text(s.get("when") or {}))
        output.fields(shown, [f for f in FIELDS if shown.get(f) not in ("", None, [], {})])
    return OK


def cmd_list(args: argparse.Namespace) -> int:
    data = client().request("GET", "/api/v2/schedules", params={"limit": 1000})["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table([_row(s) for s in data], COLUMNS, HEADERS,
                     empty="no schedules; add one with 'overcast schedules add NAME --every 1h ...'")
    return OK


def cmd_show(args: argparse.Namespace) -> int:
    return _show(client().request("GET", f"/api/v2/schedules/{q(args.schedule)}")["data"],
                 args.json)


def cmd_add(args: argparse.Namespace) -> int:
    body = dict(_body(args, adding=True), name=args.name)
    return _show(client().request("POST", "/api/v2/schedules", body)["data"], args.json)


def cmd_edit(args: argparse.Namespace) -> int:
    body = _body(args, adding=False)
    if args.name:
        body["name"] = args.name
    if not body:
        raise CliError("nothing to change: give the flags to change (see --help)", USAGE)
    return _show(client().request("PATCH", f"/api/v2/schedules/{q(args.schedule)}", body)["data"],
                 args.json)


def _toggle(args: argparse.Namespace, action: str) -> int:
    c = client()
    done = [c.request("PUT", f"/api/v2/schedules/{q(s)}", params={"action": action})["data"]
            for s in args.schedules]
    if args.json:
        output.emit_json(done)
    else:
        for s in done:
            print(f"{action}d {s['name']} (next run: {s.get('next_run') or 'none'})")
    return OK


def cmd_enable(args: argparse.Namespace) -> int:
    return _toggle(args, "enable")


def cmd_disable(args: argparse.Namespace) -> int:
    return _toggle(args, "disable")


def cmd_delete(args: argparse.Namespace) -> int:
    c = client()
    for s in args.schedules:
        c.request("DELETE", f"/api/v2/schedules/{q(s)}")
        if not args.json:
            print(f"deleted {s}")
    return OK


def cmd_runs(args: argparse.Namespace) -> int:
    data = client().request("GET", f"/api/v2/schedules/{q(args.schedule)}/runs",
                            params={"limit": args.limit})["data"]
    if args.json:
        output.emit_json(data)
        return OK
    rows = [dict(r, machines=len(r.get("machines") or []),
                 failed=(r.get("summary") or {}).get("failed", "")) for r in data]
    output.table(rows, RUN_COLUMNS, empty="no runs yet")
    return OK


def _flags(c: argparse.ArgumentParser) -> None:
    w = c.add_argument_group("when (one of)")
    w.add_argument("--cron", metavar="EXPR", help="a crontab line: '*/15 * * * *', '@daily'")
    w.add_argument("--every", metavar="DURATION", help="an interval: 90s, 10m, 2h, 1d")
    w.add_argument("--at", metavar="DATETIME", help="once, at 2030-01-31T18:00:00Z")
    w.add_argument("--timezone", metavar="TZ", help="for --cron/--at: an IANA name (default UTC)")
    a = c.add_argument_group("what (in this order)")
    a.add_argument("--action", action="append", choices=VERBS, help="a machine action")
    a.add_argument("--script", metavar="SCRIPT", help="run a script of the library (id or name)")
    a.add_argument("--command", metavar="CMD", help="run a shell command")
    a.add_argument("--params", metavar="TEXT", help="arguments of the script or command")
    a.add_argument("--notify", action="append", metavar="EMAIL", help="e-mail someone")
    a.add_argument("--subject", help="the notification's subject")
    a.add_argument("--message", help="the notification's text")
    s = c.add_argument_group("on which machines (all must hold; chosen at each run)")
    s.add_argument("--machine", action="append", metavar="ID[,ID]", help="machine ids")
    s.add_argument("--tag", action="append", metavar="KEY[=VALUE]", help="a tag they have")
    s.add_argument("--older-than", type=int, metavar="MINUTES", help="created this long ago")
    o = c.add_argument_group("limits")
    o.add_argument("--max-runs", type=int, metavar="N", help="stop after N runs")
    o.add_argument("--expires", metavar="DATETIME", help="no run from then on")
    o.add_argument("--start-after", metavar="DATETIME", help="no run before then")
    o.add_argument("--missed", choices=("run_once", "skip"),
                   help="runs missed while the controller was down (default run_once)")
    o.add_argument("--run-now", action="store_true", help="also run once now")
    c.add_argument("--description", metavar="TEXT")


def register(sub: Any) -> None:
    p = sub.add_parser("schedules", help="run scripts, machine actions or notifications on a "
                       "schedule", description="Without a subcommand: list schedules.")
    json_opt(p)
    p.set_defaults(func=cmd_list)
    g = p.add_subparsers(dest="cmd", metavar="COMMAND")
    c = g.add_parser("list", help="list schedules")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_list)
    c = g.add_parser("show", help="show a schedule")
    c.add_argument("schedule", help="id or name")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_show)
    c = g.add_parser("add", help="add a schedule",
                     description="Machines are chosen at each run: one tagged later is "
                     "included. Crontab times are in --timezone (default UTC).")
    c.add_argument("name")
    _flags(c)
    c.add_argument("--disabled", action="store_true", help="add it disabled")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_add)
    c = g.add_parser("edit", help="change a schedule (what is not given stays)")
    c.add_argument("schedule", help="id or name")
    c.add_argument("--name", help="a new name")
    _flags(c)
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_edit)
    for name, fn, text in (("enable", cmd_enable, "enable schedules (from now on)"),
                           ("disable", cmd_disable, "disable schedules")):
        c = g.add_parser(name, help=text)
        c.add_argument("schedules", nargs="+", metavar="SCHEDULE")
        json_opt(c, inherit=True)
        c.set_defaults(func=fn)
    c = g.add_parser("delete", help="delete schedules and their runs")
    c.add_argument("schedules", nargs="+", metavar="SCHEDULE")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_delete)
    c = g.add_parser("runs", help="a schedule's runs, newest first")
    c.add_argument("schedule", help="id or name")
    c.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_runs)
