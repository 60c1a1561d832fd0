"""``overcast rules`` (list, show, add, edit, rename, enable, disable, delete),
``overcast incidents`` and ``overcast notifications`` (list, show, retry, and
``seal-password``: the SMTP password sealed with the controller's secret key, for the
``smtp_password`` setting).

A rule with one condition is written with flags (``--metric``, ``--logs`` or ``--nodata``,
``--op``, ``--threshold``...); anything else as the API's JSON with ``--file``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from controller.cli import output
from controller.cli.client import OK, USAGE, CliError
from controller.cli.clouds import client, json_opt, key_values, q

COLUMNS = ["id", "name", "enabled", "condition", "selects", "actions", "every"]
INCIDENT_COLUMNS = ["id", "state", "rule_name", "machine_name", "value", "started", "fired_at",
                    "resolved_at"]
NOTIFICATION_COLUMNS = ["id", "kind", "status", "to", "subject", "attempts", "last_error", "created"]
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"^(\d+)\s*([smhdw]?)$")
MACHINE_ACTIONS = ("start", "stop", "reboot", "destroy", "suspend", "resume")


def duration(text: str, amount: str = "offset") -> dict[str, Any]:
    """``90``, ``90s``, ``5m``, ``2h``, ``1d`` as the API's {amount, period}."""
    m = _DURATION.match(text.strip())
    if not m:
        raise CliError(f"{text!r} is not a duration (like 30s, 5m, 2h, 1d)", USAGE)
    return {amount: int(m.group(1)), "period": _UNITS[m.group(2) or "s"]}


def _span(d: dict[str, Any], amount: str) -> str:
    return f"{d.get(amount, 0)}{d.get('period', 'seconds')[0]}"


def _row(r: dict[str, Any]) -> dict[str, Any]:
    conds = []
    for c in r.get("conditions", []):
        if c["data_type"] == "nodata":
            conds.append(f"no data {_span(c['window'], 'start')}")
        else:
            qd = c["query"]
            conds.append(f"{qd['aggregation']}({qd['target']}) {qd['operator']} {qd['threshold']} "
                         f"/{_span(c['window'], 'start')}")
    sel = [s.get("ids") and f"{len(s['ids'])} machines" or s.get("include") and
           "tags " + ",".join(s["include"]) or s["type"] for s in r.get("selectors", [])]
    return dict(r, condition=" and ".join(conds), selects=", ".join(sel) or "all monitored",
                actions=",".join(a["action_type"] for a in r.get("actions", [])) or "-",
                every=_span(r.get("when", {}), "every"))


def cmd_list(args: argparse.Namespace) -> int:
    data = client().request("GET", "/api/v2/rules", params={"limit": 1000})["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table([_row(r) for r in data], COLUMNS, empty="no rules; add one with 'overcast rules add'")
    return OK


def _show(r: dict[str, Any], as_json: bool) -> int:
    if as_json:
        output.emit_json(r)
        return OK
    row = _row(r)
    output.fields(row, ["id", "name", "description", "enabled", "condition", "selects", "every"])
    print(f"{'after'.ljust(11)}  {_span(r.get('trigger_after', {}), 'offset')}")
    for a in r.get("actions", []):
        extra = {k: v for k, v in a.items() if k not in ("action_type",) and v not in ("", [], {}, None, False)}
        print(f"{'action'.ljust(11)}  {a['action_type']} {json.dumps(extra, ensure_ascii=False)}")
    return OK


def cmd_show(args: argparse.Namespace) -> int:
    return _show(client().request("GET", f"/api/v2/rules/{q(args.rule)}")["data"], args.json)


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        body = json.loads(text)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", USAGE) from None
    except ValueError as exc:
        raise CliError(f"{path} is not JSON: {exc}", USAGE) from None
    if not isinstance(body, dict):
        raise CliError(f"{path} must hold a JSON object (a rule)", USAGE)
    return body


def _condition(args: argparse.Namespace, old: dict[str, Any] | None) -> dict[str, Any] | None:
    given = [x for x in (args.metric, args.logs, args.nodata) if x is not None]
    if len(given) > 1:
        raise CliError("give one of --metric, --logs and --nodata", USAGE)
    tweaks = any(x is not None for x in (args.op, args.threshold, args.aggregation, args.window))
    if not given and not tweaks:
        return None
    c: dict[str, Any] = json.loads(json.dumps(old)) if old else {"data_type": "metrics", "query": {}}
    if args.nodata is not None:
        return {"data_type": "nodata", "window": duration(args.nodata, "start")}
    if args.metric is not None or args.logs is not None:
        c["data_type"] = "metrics" if args.metric is not None else "logs"
        c.setdefault("query", {})["target"] = args.metric if args.metric is not None else args.logs
    qd = c.setdefault("query", {})
    if args.op is not None:
        qd["operator"] = args.op
    if args.threshold is not None:
        qd["threshold"] = args.threshold
    if args.aggregation is not None:
        qd["aggregation"] = args.aggregation
    if args.window is not None:
        c["window"] = duration(args.window, "start")
    c.setdefault("window", {"start": 5, "period": "minutes"})
    qd.setdefault("operator", "gt")
    if "threshold" not in qd:
        qd["threshold"] = 1 if c["data_type"] == "logs" else None
        if qd["threshold"] is None:
            raise CliError("--threshold is required with --metric", USAGE)
        qd["operator"] = "ge" if args.op is None else qd["operator"]
    return c


def _actions(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    out: list[dict[str, Any]] = []
    if args.email or args.user:
        out.append({"action_type": "notify", "emails": args.email or [], "users": args.user or []})
    if args.webhook:
        headers = key_values(args.header, "--header", bare=False)
        secret = key_values(args.secret_header, "--secret-header", bare=False)
        out.append({"action_type": "webhook", "url": args.webhook, "method": args.method,
                    "headers": {**headers, **secret}, "secret_headers": sorted(secret)})
    if args.script:
        out.append({"action_type": "run_script", "script_type": "existing", "script": args.script,
                    "params": args.params or ""})
    if args.command:
        out.append({"action_type": "run_script", "script_type": "inline", "command": args.command,
                    "params": args.params or ""})
    for verb in args.action or []:
        out.append({"action_type": verb})
    if args.on_resolve:
        for a in out:
            if a["action_type"] in ("notify", "webhook"):
                a["on_resolve"] = True
    return out if out or args.no_actions else None


def _body(args: argparse.Namespace, old: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = _read_file(args.file) if args.file else {}
    cond = _condition(args, (old or {}).get("conditions", [None])[0])
    if cond is not None:
        body["conditions"] = [cond]
    selectors = []
    if args.machine:
        selectors.append({"type": "machines", "ids": args.machine})
    if args.tag:
        selectors.append({"type": "tags", "include": args.tag})
    if selectors or args.all_machines:
        body["selectors"] = selectors
    actions = _actions(args)
    if actions is not None:
        body["actions"] = actions
    for flag, field, amount in (("every", "when", "every"), ("after", "trigger_after", "offset"),
                                ("notify_every", "notify_every", "offset")):
        value = getattr(args, flag)
        if value is not None:
            body[field] = duration(value, amount)
            if field == "when":
                body[field]["schedule_type"] = "interval"
    if args.description is not None:
        body["description"] = args.description
    return body


def cmd_add(args: argparse.Namespace) -> int:
    body = _body(args, None)
    body["name"] = args.name
    if "conditions" not in body:
        raise CliError("say what to watch: --metric, --logs or --nodata (or --file)", USAGE)
    return _show(client().request("POST", "/api/v2/rules", body)["data"], args.json)


def cmd_edit(args: argparse.Namespace) -> int:
    c = client()
    old = c.request("GET", f"/api/v2/rules/{q(args.rule)}")["data"]
    body = _body(args, old)
    if not body:
        raise CliError("nothing to change: give what to change (see --help) or --file", USAGE)
    return _show(c.request("POST", f"/api/v2/rules/{q(args.rule)}", body)["data"], args.json)


def cmd_rename(args: argparse.Namespace) -> int:
    r = client().request("PATCH", f"/api/v2/rules/{q(args.rule)}", params={"name": args.name})
    return _show(r["data"], args.json)


def cmd_toggle(args: argparse.Namespace) -> int:
    c = client()
    for rule in args.rules:
        r = c.request("PUT", f"/api/v2/rules/{q(rule)}", params={"action": args.toggle})["data"]
        if not args.json:
            print(f"{args.toggle}d {r['name']}")
    return OK


def cmd_delete(args: argparse.Namespace) -> int:
    c = client()
    for rule in args.rules:
        c.request("DELETE", f"/api/v2/rules/{q(rule)}")
        if not args.json:
            print(f"deleted {rule}")
    return OK


def cmd_incidents(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("state", args.state), ("rule", args.rule), ("machine", args.machine),
                                ("since", args.since), ("limit", args.limit)) if v}
    data = client().request("GET", "/api/v2/incidents", params=params)["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table(data, INCIDENT_COLUMNS, empty="no incidents")
    return OK


def cmd_incident(args: argparse.Namespace) -> int:
    inc = client().request("GET", f"/api/v2/incidents/{q(args.incident)}")["data"]
    if args.json:
        output.emit_json(inc)
        return OK
    output.fields(inc, ["id", "state", "rule_name", "machine_name", "condition", "value", "started",
                        "fired_at", "resolved_at", "reason", "reminders", "throttled"])
    for n in inc.get("notifications", []):
        err = f" ({n['last_error']})" if n.get("last_error") else ""
        print(f"{'notified'.ljust(12)}  {n['kind']} {n.get('to') or n.get('url')}: {n['status']}, "
              f"{n['attempts']} attempt(s){err}")
    for a in inc.get("actions", []):
        if a["action_type"] not in ("notify", "webhook"):
            print(f"{'action'.ljust(12)}  {a['action_type']} on {a['event']}: {a['status']} "
                  f"{a.get('job') or a.get('error') or ''}")
    return OK


def cmd_notifications(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("status", args.status), ("kind", args.kind),
                                ("limit", args.limit)) if v}
    data = client().request("GET", "/api/v2/notifications", params=params)["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table([dict(d, to=d.get("to") or d.get("url")) for d in data], NOTIFICATION_COLUMNS,
                     empty="no notifications")
    return OK


def cmd_notification(args: argparse.Namespace) -> int:
    path = f"/api/v2/notifications/{q(args.notification)}"
    n = (client().request("POST", path + "/retry") if args.retry else client().request("GET", path))["data"]
    if args.retry and not args.json:
        print(f"{n['id']}: {n['status']} again")
    elif args.json:
        output.emit_json(n)
    else:
        output.fields(n, [k for k in ("id", "kind", "status", "to", "subject", "url", "method",
                                      "headers", "attempts", "max_attempts", "next_attempt",
                                      "last_error", "context", "created", "sent") if n.get(k)])
        for r in n.get("results", []):
            print(f"{'attempt'.ljust(12)}  {r['time']} {'ok: ' + r.get('said', '') if r.get('ok') else r.get('error', '')}")
    return OK


def cmd_seal(args: argparse.Namespace) -> int:
    """Offline: the password from standard input, sealed with this controller's key."""
    from controller.notify.smtp import PASSWORD_AAD
    from controller.secrets import SecretBox, load_key
    from controller.settings import load

    settings = load(args.config, overrides={"data_dir": args.data_dir})
    if not Path(settings.data_dir, "secret.key").exists() and not settings.secret_key:
        raise CliError(f"no secret key in {settings.data_dir}: run this where the controller "
                       "keeps its data (or give --data-dir)", USAGE)
    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise CliError("give the password on standard input", USAGE)
    box = SecretBox(load_key(settings.data_dir, settings.secret_key))
    print(box.seal(password, aad=PASSWORD_AAD))
    return OK


def _rule_flags(c: argparse.ArgumentParser) -> None:
    w = c.add_argument_group("what to watch (one condition)")
    w.add_argument("--metric", help='a metric, with label matchers: cpu_usage_active{cpu="cpu-total"}')
    w.add_argument("--logs", metavar="SEARCH", help="audit entries, e.g. action:machine.destroy")
    w.add_argument("--nodata", metavar="DURATION", help="no samples for this long, e.g. 2m")
    w.add_argument("--op", choices=["gt", "lt", "eq", "ne", "ge", "le"])
    w.add_argument("--threshold", type=float)
    w.add_argument("--aggregation", choices=["avg", "all", "any", "count"])
    w.add_argument("--window", metavar="DURATION", help="how far back (default 5m)")
    s = c.add_argument_group("which machines (default: every monitored one)")
    s.add_argument("--machine", action="append", metavar="ID")
    s.add_argument("--tag", action="append", metavar="KEY[=VALUE]")
    s.add_argument("--all-machines", action="store_true", help="(edit) drop the selectors")
    t = c.add_argument_group("when")
    t.add_argument("--every", metavar="DURATION", help="evaluate this often (default 1m)")
    t.add_argument("--after", metavar="DURATION", help="fire once it held this long")
    t.add_argument("--notify-every", metavar="DURATION", help="repeat notifications this often")
    a = c.add_argument_group("actions")
    a.add_argument("--email", action="append", metavar="ADDRESS")
    a.add_argument("--user", action="append", metavar="USER", help="a member (id or e-mail)")
    a.add_argument("--webhook", metavar="URL")
    a.add_argument("--method", default="post", choices=["post", "put", "patch", "delete"])
    a.add_argument("--header", action="append", metavar="NAME=VALUE")
    a.add_argument("--secret-header", action="append", metavar="NAME=VALUE",
                   help="a header kept sealed and never shown")
    a.add_argument("--script", help="run this script (id or name) on the machine")
    a.add_argument("--command", help="run this shell command on the machine")
    a.add_argument("--params", help="arguments of the script or command")
    a.add_argument("--action", action="append", choices=MACHINE_ACTIONS)
    a.add_argument("--on-resolve", action="store_true", help="notify on resolution too")
    a.add_argument("--no-actions", action="store_true", help="(edit) remove every action")
    c.add_argument("--description")
    c.add_argument("--file", metavar="FILE", help="the rule as the API's JSON ('-': standard input)")
    json_opt(c, inherit=True)


def register(sub: Any) -> None:
    p = sub.add_parser("rules", help="rules on metrics, logs and missing data",
                       description="Without a subcommand: list rules.")
    json_opt(p)
    p.set_defaults(func=cmd_list)
    g = p.add_subparsers(dest="cmd", metavar="COMMAND")
    c = g.add_parser("list", help="list rules")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_list)
    c = g.add_parser("show", help="show a rule")
    c.add_argument("rule", help="id or name")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_show)
    c = g.add_parser("add", help="add a rule")
    c.add_argument("name")
    _rule_flags(c)
    c.set_defaults(func=cmd_add)
    c = g.add_parser("edit", help="change a rule (the parts given)")
    c.add_argument("rule", help="id or name")
    _rule_flags(c)
    c.set_defaults(func=cmd_edit)
    c = g.add_parser("rename", help="rename a rule")
    c.add_argument("rule", help="id or name")
    c.add_argument("name")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_rename)
    for verb in ("enable", "disable"):
        c = g.add_parser(verb, help=f"{verb} rules")
        c.add_argument("rules", nargs="+", metavar="RULE")
        json_opt(c, inherit=True)
        c.set_defaults(func=cmd_toggle, toggle=verb)
    c = g.add_parser("delete", help="delete rules")
    c.add_argument("rules", nargs="+", metavar="RULE")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_delete)

    p = sub.add_parser("incidents", help="incidents of rules (newest first)",
                       description="Without an id: list incidents.")
    p.add_argument("incident", nargs="?", help="show this one")
    p.add_argument("--state", choices=["pending", "firing", "resolved", "open"])
    p.add_argument("--rule", help="id or name")
    p.add_argument("--machine", help="id or name")
    p.add_argument("--since", help="ISO 8601 time")
    p.add_argument("--limit", type=int, default=100)
    json_opt(p)
    p.set_defaults(func=lambda a: cmd_incident(a) if a.incident else cmd_incidents(a))

    p = sub.add_parser("notifications", help="e-mails and webhooks sent by rules and schedules",
                       description="Without a subcommand: list notifications.")
    p.add_argument("--status", choices=["pending", "sent", "failed"])
    p.add_argument("--kind", choices=["email", "webhook"])
    p.add_argument("--limit", type=int, default=100)
    json_opt(p)
    p.set_defaults(func=cmd_notifications)
    g = p.add_subparsers(dest="cmd", metavar="COMMAND")
    c = g.add_parser("show", help="show a notification and its attempts")
    c.add_argument("notification")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_notification, retry=False)
    c = g.add_parser("retry", help="send a failed notification again")
    c.add_argument("notification")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_notification, retry=True)
    c = g.add_parser("seal-password", help="seal the SMTP password (read from standard input) "
                     "for the smtp_password setting; run where the controller's data is")
    c.add_argument("--config", help="the controller's settings file")
    c.add_argument("--data-dir")
    c.set_defaults(func=cmd_seal)
