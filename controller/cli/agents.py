"""CLI commands for agents: run the agent, manage agents and join tokens, and `top`."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Any
from urllib.parse import quote

from controller.cli import output
from controller.cli.client import OK, Client, Login


def _client() -> Client:
    login = Login.load()
    return Client(login.url, login.token, login.ca_file)


def cmd_agent(args: argparse.Namespace) -> int:
    """`overcast agent` without a subcommand runs the agent on this host."""
    from agent.main import run

    return run(args)


def cmd_agent_list(args: argparse.Namespace) -> int:
    data = _client().request("GET", "/api/v2/agents", params={"limit": 1000, "search": args.search})["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table(data, ["id", "name", "connected", "version", "address", "last_seen", "tags",
                            "revoked", "outdated"], empty="no agents")
    return OK


def cmd_agent_show(args: argparse.Namespace) -> int:
    a = _client().request("GET", f"/api/v2/agents/{quote(args.id, safe='')}")["data"]
    if args.json:
        output.emit_json(a)
    else:
        output.fields(a, ["id", "name", "connected", "connected_since", "last_seen", "version",
                          "protocol_version", "address", "tags", "cert_not_after", "revoked",
                          "created", "machine"])
    return OK


def cmd_agent_revoke(args: argparse.Namespace) -> int:
    c = _client()
    for agent_id in args.ids:
        a = c.request("DELETE", f"/api/v2/agents/{quote(agent_id, safe='')}")["data"]
        if args.json:
            output.emit_json(a)
        else:
            print(f"revoked agent {a['id']} ({a['name']}): its stream is closed and its "
                  "certificate refused from now on")
    return OK


def cmd_join_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"uses": args.uses, "tags": args.tags or ""}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.name:
        body["name"] = args.name
    if getattr(args, "tunnel", None):
        body["tunnel"] = args.tunnel
    tok = _client().request("POST", "/api/v2/agents/tokens", body)
    if args.json:
        output.emit_json(tok)
    else:
        print(tok["command"])
        print(f"join token {tok['id']}: {tok['uses']} use(s), expires {tok['expires']}; "
              "run the command above on the host (shown only this once)", file=sys.stderr)
    return OK


def cmd_join_list(args: argparse.Namespace) -> int:
    data = _client().request("GET", "/api/v2/agents/tokens", params={"limit": 1000})["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table(data, ["id", "name", "created_by", "expires", "used", "uses", "tags", "expired"],
                     empty="no join tokens")
    return OK


def cmd_join_delete(args: argparse.Namespace) -> int:
    c = _client()
    for tid in args.ids:
        c.request("DELETE", f"/api/v2/agents/tokens/{quote(tid, safe='')}")
        print(f"deleted join token {tid}")
    return OK


def cmd_datapoints(args: argparse.Namespace) -> int:
    params = {"query": args.query, "start": args.start, "end": args.end, "step": args.step,
              "time": args.time, "tags": args.tags}
    d = _client().request("GET", "/api/v2/datapoints", params=params)["data"]["data"]
    if args.json:
        output.emit_json(d)
        return OK
    rows = []
    for r in d["result"]:
        labels = ",".join(f"{k}={v}" for k, v in r["metric"].items() if k != "__name__")
        points = [r["value"]] if "value" in r else r["values"]
        for t, v in points:
            rows.append({"time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t))),
                         "metric": r["metric"]["__name__"], "labels": labels, "value": v})
    output.table(rows, ["time", "metric", "labels", "value"], empty="no datapoints")
    return OK


TOP_QUERIES = {
    "cpu": 'cpu_usage_active{cpu="cpu-total"}',
    "mem": "mem_used_percent",
    "load1": "system_load1",
    "rx": "net_bytes_recv",
    "tx": "net_bytes_sent",
}


def _top_round(c: Client) -> dict[str, dict[str, float]]:
    by_machine: dict[str, dict[str, float]] = {}
    for name, q in TOP_QUERIES.items():
        result = c.request("GET", "/api/v2/datapoints", params={"query": q})["data"]["data"]["result"]
        for r in result:
            mid = r["metric"].get("machine_id", "")
            if r["metric"].get("interface") == "lo":
                continue
            d = by_machine.setdefault(mid, {})
            d[name] = d.get(name, 0.0) + float(r["value"][1]) if name in ("rx", "tx") else float(r["value"][1])
            d["t"] = float(r["value"][0])
    return by_machine


def cmd_top(args: argparse.Namespace) -> int:
    """A live view: CPU, memory, load and network rates per machine, from the agents' latest
    samples, refreshed every --interval seconds (rates from the change between rounds)."""
    c = _client()
    names = {m["id"]: m["name"] for m in c.request("GET", "/api/v2/machines", params={"limit": 1000})["data"]}
    prev: dict[str, dict[str, float]] = {}
    rounds = 0
    try:
        while True:
            now = _top_round(c)
            rows = []
            for mid, d in sorted(now.items(), key=lambda kv: -kv[1].get("cpu", 0.0)):
                p = prev.get(mid, {})
                dt = d.get("t", 0) - p.get("t", 0)
                rate = {k: (d[k] - p[k]) / dt if dt > 0 and k in p and k in d else None for k in ("rx", "tx")}
                rows.append({"machine": names.get(mid, mid[:12]), "cpu%": _f(d.get("cpu")),
                             "mem%": _f(d.get("mem")), "load1": _f(d.get("load1")),
                             "rx/s": _bytes(rate["rx"]), "tx/s": _bytes(rate["tx"])})
            if args.json:
                output.emit_json(rows)
            else:
                if sys.stdout.isatty() and not args.once:
                    sys.stdout.write("\x1b[H\x1b[2J")
                width = shutil.get_terminal_size().columns
                print(f"overcast top — {len(rows)} machines — {time.strftime('%H:%M:%S')}"[:width])
                output.table(rows, ["machine", "cpu%", "mem%", "load1", "rx/s", "tx/s"],
                             empty="no machine reports metrics yet")
            sys.stdout.flush()
            rounds += 1
            if args.once or (args.rounds and rounds >= args.rounds):
                return OK
            prev = now
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return OK


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def _bytes(v: float | None) -> str:
    if v is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(v) < 1024:
            return f"{v:.0f}{unit}"
        v /= 1024
    return f"{v:.0f}TB"


def register(sub: Any, token_sub: Any, duration: Any) -> None:
    """Add the agent, join-token, datapoints and top commands to the CLI's parser."""
    from agent.main import add_arguments

    p = sub.add_parser("agent", help="run the agent on this host; or list/show/revoke agents",
                       description="Without a subcommand: run the agent (enrolling first with "
                                   "--controller, --token and --ca-fingerprint).")
    add_arguments(p)
    p.set_defaults(func=cmd_agent)
    asub = p.add_subparsers(dest="agent_command", metavar="SUBCOMMAND")
    c = asub.add_parser("list", help="list agents")
    c.add_argument("--json", action="store_true")
    c.add_argument("--search")
    c.set_defaults(func=cmd_agent_list)
    c = asub.add_parser("show", help="show an agent")
    c.add_argument("id")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_agent_show)
    c = asub.add_parser("revoke", help="revoke agents: streams closed, certificates refused")
    c.add_argument("ids", nargs="+", metavar="ID")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_agent_revoke)

    j = token_sub.add_parser("join", help="join tokens that enrol agents")
    jsub = j.add_subparsers(dest="join_command", metavar="SUBCOMMAND", required=True)
    c = jsub.add_parser("create", help="create a join token; prints the agent command")
    c.add_argument("--ttl", type=duration, help="lifetime, e.g. 1h (default: the controller's, 1h)")
    c.add_argument("--uses", type=int, default=1, help="how many agents may enrol with it (default 1)")
    c.add_argument("--tags", help="tags for the agents' machines: k=v,k2=v2")
    c.add_argument("--name", help="a name to remember it by")
    c.add_argument("--tunnel", metavar="NAME", help="for hosts behind this tunnel: they reach "
                   "the controller through it (at the tunnel hub's address)")
    c.add_argument("--json", action="store_true", help="print the token object (with id, token, command)")
    c.set_defaults(func=cmd_join_create)
    c = jsub.add_parser("list", help="list join tokens")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_join_list)
    c = jsub.add_parser("delete", help="delete join tokens")
    c.add_argument("ids", nargs="+", metavar="ID")
    c.set_defaults(func=cmd_join_delete)

    p = sub.add_parser("datapoints", help="query metrics: an instant vector, or a range with --step")
    p.add_argument("query", help='e.g. system_load1{machine_id="..."}')
    p.add_argument("--start")
    p.add_argument("--end")
    p.add_argument("--step", help="e.g. 30s, 5m")
    p.add_argument("--time", help="instant query time")
    p.add_argument("--tags", help="only machines with these tags: k=v,...")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datapoints)

    p = sub.add_parser("top", help="live CPU, memory, load and network per machine")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one round and exit")
    p.add_argument("--rounds", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="one JSON list per round")
    p.set_defaults(func=cmd_top)
