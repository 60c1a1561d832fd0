"""CLI commands for agents: run the agent, manage agents and join tokens, and `top`."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Any
from urllib.parse import quote

from controller.cli import output
from controller.cli.client import FAILED, OK, USAGE, Client, Login


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
                          "latest_version", "outdated", "protocol_version", "address", "tags",
                          "cert_not_after", "revoked", "created", "machine"])
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


def cmd_agent_upgrade(args: argparse.Namespace) -> int:
    """Upgrade agents to the controller's version; the job's progress on standard error,
    one line per agent at the end; exit 1 if any was not upgraded."""
    from controller.cli.clouds import wait_jobs

    c = _client()
    job = c.request("POST", "/api/v2/agents/upgrade", {"on": args.on, "force": args.force})["data"]
    [job] = wait_jobs(c, [job], args.json)
    result = job.get("result") or {}
    if args.json:
        output.emit_json(dict(result, job=job["id"], status=job["status"], error=job.get("error")))
    else:
        for a in result.get("agents") or []:
            what = {"upgraded": f"upgraded {a.get('from') or '?'} -> {a['to']}",
                    "current": f"runs {a['to']} already"}.get(a["status"], "")
            if a["status"] == "failed":
                what = f"FAILED ({a.get('from') or '?'} -> {a['to']}): {a.get('error')}"
            print(f"{a['name']} ({a['id'][:12]}): {what}")
        if not result and job.get("error"):
            print(f"overcast: {job['error'].get('message')}", file=sys.stderr)
    return FAILED if job.get("status") == "failed" else OK


def cmd_agent_wheels_fetch(args: argparse.Namespace) -> int:
    """Download the agent's dependency wheels into the directory the controller serves."""
    from pathlib import Path

    from controller.install.wheels import PLATFORMS, PYTHONS, fetch

    if args.dir:
        dest = Path(args.dir)
    else:
        from controller.install.routes import wheels_dir
        from controller.settings import load

        dest = wheels_dir(load(args.settings, overrides={"data_dir": args.data_dir}))
    try:
        results = fetch(dest, args.platform or list(PLATFORMS), args.python or list(PYTHONS))
    except ValueError as exc:
        print(f"overcast: {exc}", file=sys.stderr)
        return USAGE
    bad = 0
    for arch, python, code, tail in results:
        if code == 0:
            print(f"{arch} Python {python}: done")
        else:
            bad += 1
            print(f"{arch} Python {python}: pip download failed (exit {code}):\n{tail}",
                  file=sys.stderr)
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    print(f"{dest}: {len(wheels)} wheels; hosts without the package index install the agent "
          "from them (GET /install/wheels/)")
    return FAILED if bad else OK


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
              "run the command above on the host to install the agent and enrol it (shown "
              "only this once); where the agent is installed already:\n  "
              f"{tok['agent_command']}", file=sys.stderr)
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
    params = {"query": args.query, "start": _when(args.start), "end": _when(args.end),
              "step": args.step, "time": _when(args.time), "tags": args.tags,
              "search": args.search}
    d = _client().request("GET", "/api/v2/datapoints", params=params)["data"]["data"]
    if args.json:
        output.emit_json(d)
        return OK
    rows = []
    for r in d["result"]:
        # rate(), sum() and arithmetic drop the metric name, as in Prometheus
        labels = ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k != "__name__")
        points = [r["value"]] if "value" in r else r["values"]
        for t, v in points:
            rows.append({"time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t))),
                         "metric": r["metric"].get("__name__", ""), "labels": labels, "value": v})
    output.table(rows, ["time", "metric", "labels", "value"], empty="no datapoints")
    return OK


_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _when(value: str | None) -> str | None:
    """A time for the API: "now", "now-1h" or "1h" (an hour ago) become Unix seconds; Unix
    seconds and RFC 3339 times go as they are."""
    import re

    if not value:
        return value
    m = re.fullmatch(r"(?:now)?-?((?:\d+[smhdw])*)", value.strip())
    if m is None or not (value.strip() == "now" or m.group(1)):
        return value
    ago = sum(int(n) * _AGO[u] for n, u in re.findall(r"(\d+)([smhdw])", m.group(1)))
    return f"{time.time() - ago:.3f}"


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
    c = asub.add_parser("upgrade", help="upgrade agents to the version this controller serves",
                        description="Upgrade agents through their streams: each installs the "
                                    "controller's agent package and restarts, keeping its "
                                    "identity. Exit 1 if any was not upgraded.")
    c.add_argument("--on", action="extend", nargs="+", required=True, metavar="AGENT",
                   help="agent ids, names or tag:key=value selectors")
    c.add_argument("--force", action="store_true", help="also agents that run this version")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_agent_upgrade)
    w = asub.add_parser("wheels", help="the dependency wheels served to hosts without the "
                                       "package index")
    wsub = w.add_subparsers(dest="wheels_command", metavar="SUBCOMMAND", required=True)
    c = wsub.add_parser("fetch", help="download the agent's dependencies (pip download) into "
                                      "agent_wheels_dir, on the controller's host")
    c.add_argument("--platform", action="append", choices=["x86_64", "aarch64"],
                   help="repeat for more (default: both)")
    c.add_argument("--python", action="append", metavar="3.X",
                   help="CPython version of the hosts; repeat for more (default 3.11, 3.12, 3.13)")
    c.add_argument("--dir", help="where to (default: the agent_wheels_dir setting, else "
                                 "<data_dir>/wheels)")
    c.add_argument("--settings", metavar="FILE", help="the controller's settings file")
    c.add_argument("--data-dir", help="the controller's data directory")
    c.set_defaults(func=cmd_agent_wheels_fetch)

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

    p = sub.add_parser("datapoints", help="query metrics: an instant vector, or a range with "
                       "--start/--end/--step",
                       description="QUERY is a PromQL subset: selectors with label matchers, "
                                   "x[5m] ranges, rate/irate/increase, *_over_time, "
                                   "sum/avg/min/max/count by (...), arithmetic and comparisons "
                                   "with a number. Times: Unix seconds, RFC 3339, now, now-1h "
                                   "or 1h (an hour ago).")
    p.add_argument("query", help='e.g. system_load1{machine_id="..."} or '
                                 '"sum by (machine_id) (rate(net_bytes_recv[5m]))"')
    p.add_argument("--start", help="range start, e.g. 1h (an hour ago)")
    p.add_argument("--end", help="range end (default now)")
    p.add_argument("--step", help="e.g. 30s, 5m")
    p.add_argument("--time", help="instant query time")
    p.add_argument("--tags", help="only machines with these tags: k=v,...")
    p.add_argument("--search", help="only machines this search matches, e.g. state:running")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datapoints)

    p = sub.add_parser("top", help="live CPU, memory, load and network per machine")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one round and exit")
    p.add_argument("--rounds", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="one JSON list per round")
    p.set_defaults(func=cmd_top)
