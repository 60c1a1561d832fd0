"""CLI commands for what clouds hold: machines (list, tree of hosts and guests, show, actions,
create), volumes, networks, DNS zones and records, the sizes, images and locations to create
machines from; tags on all of them, and costs. Actions run as jobs (``--wait`` follows them;
see ``cli.clouds``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from controller.cli import output
from controller.cli.client import OK, USAGE, Client, CliError, warn
from controller.cli.clouds import (
    client,
    json_opt,
    key_values,
    money,
    q,
    read_text,
    report_jobs,
    run_job,
    wait_jobs,
    wait_opt,
)

if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]  # noqa: SLF001
else:
    _SubParsers = argparse._SubParsersAction  # noqa: SLF001

MACHINE_COLUMNS = ["id", "name", "state", "cloud", "public_ips", "tags"]
MACHINE_FIELDS = ["id", "name", "state", "cloud", "hostname", "public_ips", "private_ips", "tags",
                  "size", "image", "location", "os_type", "cores", "cost", "parent", "children",
                  "created", "last_seen", "unreachable_since", "missing_since", "external_id"]
VERBS = ("start", "stop", "reboot", "destroy", "suspend", "resume")
COLUMNS = {
    "volume": ["id", "name", "cloud", "size_gb", "state", "location", "attached_to", "tags"],
    "network": ["id", "name", "cloud", "cidr", "location", "subnets", "tags"],
    "zone": ["id", "domain", "cloud", "type", "ttl", "records"],
    "size": ["id", "name", "cloud", "cpus", "ram_mb", "disk_gb", "monthly", "external_id"],
    "image": ["id", "name", "cloud", "os_type", "external_id"],
    "location": ["id", "name", "cloud", "country", "external_id"],
}


def cloud_id(c: Client, cloud: str) -> str:
    """A cloud's id from its id or name; exit 4 with 'no such cloud' for neither."""
    return str(c.request("GET", f"/api/v2/clouds/{q(cloud)}")["data"]["id"])


def cloud_names(c: Client) -> dict[str, str]:
    data = c.request("GET", "/api/v2/clouds", params={"limit": 1000, "only": "id,name"})["data"]
    return {cl["id"]: cl.get("name") or cl["id"] for cl in data}


def _list_params(args: argparse.Namespace) -> dict[str, Any]:
    return {"search": args.search, "sort": args.sort, "limit": args.limit, "start": args.start}


def _more(meta: dict[str, Any]) -> None:
    if meta.get("total", 0) > meta.get("returned", 0):
        warn(f"showing {meta['returned']} of {meta['total']} from {meta['start']}; "
             "use --start/--limit for more")


# ---- machines ------------------------------------------------------------------------------
def tree(machines: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(depth, machine): each host followed by its guests, in the order given."""
    ids = {m["id"] for m in machines}
    guests: dict[str, list[dict[str, Any]]] = {}
    for m in machines:
        if m.get("parent") in ids and m["parent"] != m["id"]:
            guests.setdefault(m["parent"], []).append(m)
    out: list[tuple[int, dict[str, Any]]] = []
    seen: set[str] = set()

    def walk(m: dict[str, Any], depth: int) -> None:
        if m["id"] in seen:  # a loop of parents in bad data: each machine once
            return
        seen.add(m["id"])
        out.append((depth, m))
        for g in guests.get(m["id"], []):
            walk(g, depth + 1)

    for m in machines:
        if m.get("parent") not in ids or m["parent"] == m["id"]:
            walk(m, 0)
    for m in machines:
        walk(m, 0)
    return out


def cmd_machines_list(args: argparse.Namespace) -> int:
    c = client()
    params = _list_params(args)
    if args.cloud:
        params["cloud"] = cloud_id(c, args.cloud)
    if args.tree and params["limit"] is None:
        params["limit"] = 1000  # a host and its guests on one page
    resp = c.request("GET", "/api/v2/machines", params=params)
    rows: list[dict[str, Any]] = resp["data"]
    depths = [0] * len(rows)
    if args.tree:
        ordered = tree(rows)
        depths, rows = [d for d, _ in ordered], [m for _, m in ordered]
    if args.json:
        output.emit_json(rows)
        return OK
    names = cloud_names(c) if rows else {}
    shown = [dict(m, cloud=names.get(m.get("cloud", ""), m.get("cloud", "")),
                  name=("   " * (d - 1) + "└─ " if d else "") + str(m.get("name", "")))
             for d, m in zip(depths, rows, strict=True)]
    output.table(shown, MACHINE_COLUMNS, empty="no machines")
    _more(resp["meta"])
    return OK


def cmd_machines_show(args: argparse.Namespace) -> int:
    c = client()
    m = c.request("GET", f"/api/v2/machines/{q(args.id)}")["data"]
    if args.json:
        output.emit_json(m)
        return OK
    cid = str(m.get("cloud", ""))
    name = cloud_names(c).get(cid, cid) if cid else ""
    output.fields(dict(m, cost=money(m.get("cost")), cloud=f"{name} ({cid})" if name != cid else cid),
                  MACHINE_FIELDS)
    return OK


def cmd_machines_action(args: argparse.Namespace) -> int:
    c = client()
    body: dict[str, Any] | None = None
    if args.verb == "resize":
        body = {"size": args.size}
    elif args.verb == "rename":
        body = {"name": args.name}
    jobs: list[dict[str, Any]] = []
    code = OK
    for mid in args.ids:
        try:
            jobs.append(c.request("POST", f"/api/v2/machines/{q(mid)}/actions/{args.verb}", body)["data"])
        except CliError as exc:
            if len(args.ids) == 1:
                raise
            print(f"overcast: {args.verb} {mid}: {exc.message}", file=sys.stderr)
            code = code or exc.code
    if args.wait and jobs:
        jobs = wait_jobs(c, jobs, args.json)
    if not jobs:
        return code
    rc = report_jobs(jobs, args.json, single=args.verb in ("resize", "rename"))
    return code or rc


def cmd_machines_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"cloud": args.cloud, "name": args.name, "quantity": args.quantity,
                            "dry": args.dry_run}
    for k in ("size", "image", "location"):
        if getattr(args, k):
            body[k] = getattr(args, k)
    if args.key_file:
        key = read_text(args.key_file, "the public key").strip()
        if "PRIVATE KEY" in key:  # never send a private key to install
            raise CliError(f"{args.key_file} is a private key: give the public one (.pub)", USAGE)
        body["key"] = key
    if args.cloud_init:
        body["cloudinit"] = read_text(args.cloud_init, "cloud-init")
    if args.tag:
        body["tags"] = key_values(args.tag, "--tag")
    c = client()
    r = c.request("POST", "/api/v2/machines", body)
    if args.dry_run:
        plan = r["data"]["plan"]
        if args.json:
            output.emit_json(r["data"])
        else:
            output.fields(dict(plan, names=", ".join(plan.get("names", []))),
                          ["cloud", "provider", "names", "size", "image", "location", "tags",
                           "key", "cloudinit"])
            warn("dry run: nothing was created")
        return OK
    job = r["data"]
    if args.wait:
        job = wait_jobs(c, [job], args.json)[0]
    rc = report_jobs([job], args.json, single=True)
    if not args.json and job.get("status") == "succeeded":
        for made in job.get("result") or []:
            print(f"  created {made.get('name')} ({made.get('id')})")
    return rc


class _AnyWord:
    """Subcommand choices that accept any word (one that names no subcommand is an ID)."""

    def __init__(self, names: dict[str, Any]) -> None:
        self.names = names

    def __contains__(self, word: object) -> bool:
        return True

    def __iter__(self) -> Any:
        return iter(self.names)


class _IdOrCommand(_SubParsers):
    """``machines ID`` without a subcommand shows the machine (as before subcommands)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.choices = _AnyWord(self._name_parser_map)  # type: ignore[assignment]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values and values[0] not in self._name_parser_map:
            values = ["show", *values]
        super().__call__(parser, namespace, values, option_string)


def _list_opts(p: argparse.ArgumentParser, cloud: bool = True) -> None:
    p.add_argument("--search", help="filter, e.g. 'state:running AND tags.env:prod'")
    p.add_argument("--sort", help="fields, '-' for descending, e.g. -created,name")
    p.add_argument("--limit", type=int, help="how many (default 100)")
    p.add_argument("--start", help="offset or id to start from")
    if cloud:
        p.add_argument("--cloud", help="only this cloud (id or name)")
    json_opt(p, inherit=False)


def _register_machines(sub: Any) -> None:
    p = sub.add_parser("machines", help="machines: list, show, start/stop/..., create",
                       usage="overcast machines [options] [ID | SUBCOMMAND ...]",
                       description="Without a subcommand: list machines; with an ID: show it.")
    _list_opts(p)
    p.add_argument("--tree", action="store_true", help="hosts with their guests indented")
    p.set_defaults(func=cmd_machines_list)
    msub = p.add_subparsers(dest="machines_command", metavar="SUBCOMMAND", action=_IdOrCommand,
                            prog="overcast machines")
    c = msub.add_parser("list", help="list machines")
    _list_opts(c)
    c.add_argument("--tree", action="store_true", help="hosts with their guests indented")
    c.set_defaults(func=cmd_machines_list)
    c = msub.add_parser("show", help="show a machine (also: overcast machines ID)")
    c.add_argument("id")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_machines_show)
    for verb in VERBS:
        c = msub.add_parser(verb, help=f"{verb} machines (a job each)")
        c.add_argument("ids", nargs="+", metavar="ID")
        wait_opt(c)
        json_opt(c, inherit=True)
        c.set_defaults(func=cmd_machines_action, verb=verb)
    c = msub.add_parser("resize", help="give a machine another size (a job)")
    c.add_argument("ids", nargs=1, metavar="ID")
    c.add_argument("--size", required=True, help="size id (overcast sizes) or the provider's")
    wait_opt(c)
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_machines_action, verb="resize")
    c = msub.add_parser("rename", help="rename a machine at its provider (a job)")
    c.add_argument("ids", nargs=1, metavar="ID")
    c.add_argument("--name", required=True, help="the new name")
    wait_opt(c)
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_machines_action, verb="rename")
    c = msub.add_parser("create", help="create machines (a job); --dry-run shows the plan")
    c.add_argument("--cloud", required=True, help="cloud id or name")
    c.add_argument("--name", required=True, help="name (with --quantity: NAME-1, NAME-2, ...)")
    c.add_argument("--size", help="size id (overcast sizes) or the provider's")
    c.add_argument("--image", help="image id (overcast images) or the provider's")
    c.add_argument("--location", help="location id (overcast locations) or the provider's")
    c.add_argument("--key-file", metavar="PUBKEY", help="an OpenSSH public key to install")
    c.add_argument("--cloud-init", metavar="FILE", help="cloud-init user data")
    c.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag (repeat)")
    c.add_argument("--quantity", type=int, default=1, help="how many (default 1)")
    c.add_argument("--dry-run", action="store_true", help="check and show the plan; create nothing")
    wait_opt(c)
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_machines_create)


# ---- volumes, networks, zones, catalogues ----------------------------------------------------------
def _row(kind: str, d: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    row = dict(d, cloud=names.get(d.get("cloud", ""), d.get("cloud", "")))
    if kind == "volume":
        row["size_gb"] = d.get("size")
    elif kind == "network":
        row["subnets"] = [s.get("cidr") or s.get("id") for s in d.get("subnets") or []]
    elif kind == "size":
        cost = d.get("cost") or {}
        row.update(ram_mb=d.get("ram"), disk_gb=d.get("disk"),
                   monthly=f"${float(cost['monthly']):,.2f}" if cost.get("monthly") else "")
    elif kind == "record":
        row["data"] = d.get("rdata")
    return row


def cmd_list(args: argparse.Namespace) -> int:
    c = client()
    params = _list_params(args)
    if args.cloud:
        params["cloud"] = cloud_id(c, args.cloud)
    resp = c.request("GET", f"/api/v2/{args.kind}s", params=params)
    if args.json:
        output.emit_json(resp["data"])
        return OK
    names = cloud_names(c) if resp["data"] else {}
    output.table([_row(args.kind, d, names) for d in resp["data"]], COLUMNS[args.kind],
                 empty=f"no {args.kind}s")
    _more(resp["meta"])
    return OK


def cmd_records(args: argparse.Namespace) -> int:
    resp = client().request("GET", f"/api/v2/zones/{q(args.zone)}/records", params=_list_params(args))
    if args.json:
        output.emit_json(resp["data"])
        return OK
    output.table([_row("record", d, {}) for d in resp["data"]], ["id", "name", "type", "data", "ttl"],
                 empty="no records")
    _more(resp["meta"])
    return OK


def _job_cmd(build: Any) -> Any:
    """A command that starts one job: ``build(args) -> (method, path, body)``."""
    def cmd(args: argparse.Namespace) -> int:
        method, path, body = build(args)
        return run_job(client(), method, path, body, args)
    return cmd


def _opt(args: argparse.Namespace, **fields: str) -> dict[str, Any]:
    return {k: getattr(args, v, None) for k, v in fields.items() if getattr(args, v, None) not in (None, "")}


def _group(sub: Any, kind: str, help: str) -> Any:
    """``overcast KINDs`` (lists) with ``list`` and the subcommands the caller adds."""
    p = sub.add_parser(f"{kind}s", help=help, description=f"Without a subcommand: list {kind}s.")
    _list_opts(p)
    p.set_defaults(func=cmd_list, kind=kind)
    gsub = p.add_subparsers(dest=f"{kind}s_command", metavar="SUBCOMMAND")
    c = gsub.add_parser("list", help=f"list {kind}s")
    _list_opts(c)
    c.set_defaults(func=cmd_list, kind=kind)
    return gsub


def _job_parser(gsub: Any, name: str, help: str, build: Any, *positionals: str) -> argparse.ArgumentParser:
    c: argparse.ArgumentParser = gsub.add_parser(name, help=help)
    for pos in positionals:
        c.add_argument(pos.lower(), metavar=pos)
    wait_opt(c)
    json_opt(c)
    c.set_defaults(func=_job_cmd(build))
    return c


def _register_resources(sub: Any) -> None:
    g = _group(sub, "volume", "volumes: list, create, delete, attach, detach")
    c = _job_parser(g, "create", "create a volume (a job)", lambda a: (
        "POST", "/api/v2/volumes", {"cloud": a.cloud, "name": a.name, "size": a.size,
                                    **_opt(a, location="location")}))
    c.add_argument("--cloud", required=True, help="cloud id or name")
    c.add_argument("--name", required=True)
    c.add_argument("--size", required=True, type=int, help="GB")
    c.add_argument("--location", help="location id or the provider's")
    _job_parser(g, "delete", "delete a volume (a job)",
                lambda a: ("DELETE", f"/api/v2/volumes/{q(a.id)}", None), "ID")
    for verb in ("attach", "detach"):
        c = _job_parser(g, verb, f"{verb} a volume {'to' if verb == 'attach' else 'from'} a machine",
                        lambda a, verb=verb: (
                            "POST", f"/api/v2/volumes/{q(a.id)}/actions/{verb}",
                            {"machine": a.machine, **_opt(a, device="device")}), "ID")
        c.add_argument("--machine", required=True, help="machine id")
        if verb == "attach":
            c.add_argument("--device", help="e.g. /dev/sdf")

    g = _group(sub, "network", "networks: list, create, delete")
    c = _job_parser(g, "create", "create a network (a job)", lambda a: (
        "POST", "/api/v2/networks", {"cloud": a.cloud, "name": a.name, **_opt(a, cidr="cidr")}))
    c.add_argument("--cloud", required=True, help="cloud id or name")
    c.add_argument("--name", required=True)
    c.add_argument("--cidr", help="e.g. 10.0.0.0/16")
    _job_parser(g, "delete", "delete a network (a job)",
                lambda a: ("DELETE", f"/api/v2/networks/{q(a.id)}", None), "ID")

    g = _group(sub, "zone", "DNS zones and their records")
    c = _job_parser(g, "create", "create a DNS zone (a job)", lambda a: (
        "POST", "/api/v2/zones", {"cloud": a.cloud, "domain": a.domain,
                                  **_opt(a, type="type", ttl="ttl")}))
    c.add_argument("--cloud", required=True, help="cloud id or name")
    c.add_argument("--domain", required=True, help="e.g. example.com")
    c.add_argument("--type", choices=["master", "slave"])
    c.add_argument("--ttl", type=int)
    _job_parser(g, "delete", "delete a DNS zone (a job)",
                lambda a: ("DELETE", f"/api/v2/zones/{q(a.id)}", None), "ID")
    c = g.add_parser("records", help="list a zone's records")
    c.add_argument("zone", metavar="ZONE", help="zone id")
    _list_opts(c, cloud=False)
    c.set_defaults(func=cmd_records)
    c = _job_parser(g, "record-create", "create a DNS record (a job)", lambda a: (
        "POST", f"/api/v2/zones/{q(a.zone)}/records",
        {"name": a.name, "type": a.type.upper(), "data": a.data, **_opt(a, ttl="ttl")}), "ZONE")
    c.add_argument("--name", required=True, help="e.g. www ('' for the apex)")
    c.add_argument("--type", required=True, help="A, AAAA, CNAME, MX, TXT, NS, SRV, CAA, PTR, SPF")
    c.add_argument("--data", required=True, help="e.g. 192.0.2.10")
    c.add_argument("--ttl", type=int)
    _job_parser(g, "record-delete", "delete a DNS record (a job)",
                lambda a: ("DELETE", f"/api/v2/zones/{q(a.zone)}/records/{q(a.record)}", None),
                "ZONE", "RECORD")
    c = _job_parser(g, "record-edit", "change a DNS record's data, TTL, name or type (a job)",
                    lambda a: ("PUT", f"/api/v2/zones/{q(a.zone)}/records/{q(a.record)}",
                               {**_opt(a, name="name", data="data", ttl="ttl"),
                                **({"type": a.type.upper()} if a.type else {})}), "ZONE", "RECORD")
    c.add_argument("--name")
    c.add_argument("--type")
    c.add_argument("--data")
    c.add_argument("--ttl", type=int)

    for kind, what in (("size", "machine sizes"), ("image", "images"), ("location", "locations")):
        p = sub.add_parser(f"{kind}s", help=f"{what} the clouds offer (to create machines)")
        _list_opts(p)
        p.set_defaults(func=cmd_list, kind=kind)


# ---- tags and costs ----------------------------------------------------------------------------
def cmd_tag(args: argparse.Namespace) -> int:
    tags = key_values(args.tags, "tag")
    c = client()
    ids = [cloud_id(c, i) for i in args.ids] if args.resource_type.rstrip("s") == "cloud" else args.ids
    op = {"operation": "remove" if args.remove else "add",
          "resources": [{"resource_type": args.resource_type, "resource_id": rid} for rid in ids],
          "tags": [{"key": k, "value": v} for k, v in tags.items()]}
    r = c.request("POST", "/api/v2/tags", {"operations": [op]})["data"]
    if args.json:
        output.emit_json(r)
    else:
        listed = ", ".join(k if args.remove else f"{k}={v}" for k, v in tags.items())
        print(f"{'removed' if args.remove else 'set'} {listed} on {r.get('resources', 0)} "
              f"{args.resource_type.rstrip('s')}(s)")
    return OK


def cmd_tags(args: argparse.Namespace) -> int:
    params = {"types": args.type, "search": args.search, "limit": 1000}
    data = client().request("GET", "/api/v2/tags", params=params)["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table(data, ["key", "value", "count", "resources"], empty="no tags")
    return OK


def _cost_row(t: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**extra, "machines": t.get("machines", 0), "hourly": f"${float(t.get('hourly', 0)):.4f}",
            "monthly": f"${float(t.get('monthly', 0)):,.2f}", "unpriced": t.get("unknown", 0)}


def cmd_costs(args: argparse.Namespace) -> int:
    data = client().request("GET", "/api/v2/costs", params={"tag": args.tag})["data"]
    if args.json:
        output.emit_json(data)
        return OK
    org = data.get("org") or {}
    print(f"estimated: ${float(org.get('hourly', 0)):.4f}/hour, ${float(org.get('monthly', 0)):,.2f}"
          f"/month for {org.get('machines', 0)} machine(s)"
          + (f" ({org['unknown']} without a known price)" if org.get("unknown") else ""))
    cols = ["machines", "hourly", "monthly", "unpriced"]
    if data.get("clouds"):
        print()
        output.table([_cost_row(t, cloud=t.get("name") or t.get("id")) for t in data["clouds"]],
                     ["cloud", *cols])
    if args.tag:
        print()
        output.table([_cost_row(t, **{args.tag: t.get("value")}) for t in data.get("tags", [])],
                     [args.tag, *cols], empty=f"no machines tagged {args.tag}")
    return OK


def register(sub: Any) -> None:
    """Add machines, volumes, networks, zones, sizes, images, locations, tag, tags and costs
    to the CLI's parser."""
    _register_machines(sub)
    _register_resources(sub)

    p = sub.add_parser("tag", help="add (or --remove) tags on resources",
                       epilog="e.g. overcast tag machine ID env=prod team=web")
    p.add_argument("resource_type", metavar="RESOURCE_TYPE",
                   help="machine, cloud, volume, network, zone, record or image")
    p.add_argument("ids", nargs=1, metavar="ID", help="its id (a cloud: id or name)")
    p.add_argument("tags", nargs="+", metavar="KEY=VALUE", help="with --remove: KEY alone")
    p.add_argument("--remove", action="store_true", help="remove these tags")
    json_opt(p)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("tags", help="tags in use, with counts per resource type")
    p.add_argument("--type", help="only these types: machine,volume,...")
    p.add_argument("--search", help="filter, e.g. key:env")
    json_opt(p)
    p.set_defaults(func=cmd_tags)

    p = sub.add_parser("costs", help="estimated costs: the organisation, per cloud, per tag value")
    p.add_argument("--tag", metavar="KEY", help="also per value of this tag")
    json_opt(p)
    p.set_defaults(func=cmd_costs)
