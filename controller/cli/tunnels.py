"""``overcast tunnels``: WireGuard tunnels to private networks (create prints the gateway's
install command; list, show, rotate, delete)."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli import output
from controller.cli.client import OK
from controller.cli.clouds import client, json_opt, q

COLUMNS = ["id", "name", "cidrs", "address", "state", "last_handshake"]
FIELDS = ["id", "name", "cidrs", "excluded", "allowed_ips", "address", "public_key", "state",
          "last_handshake", "rx_bytes", "tx_bytes", "registered", "gateway_machine",
          "gateway_error", "created", "created_by"]


def _flat(t: dict[str, Any]) -> dict[str, Any]:
    h = t.get("health") or {}
    return dict(t, state=h.get("state", ""), last_handshake=h.get("last_handshake") or "",
                rx_bytes=h.get("rx_bytes", 0), tx_bytes=h.get("tx_bytes", 0),
                cidrs=", ".join(t.get("cidrs", [])), excluded=", ".join(t.get("excluded", [])),
                allowed_ips=", ".join(t.get("allowed_ips", [])))


def _with_command(t: dict[str, Any], as_json: bool, verb: str) -> int:
    if as_json:
        output.emit_json(t)
        return OK
    if "install_command" not in t:  # an agent is the gateway
        told = ("is asked for a new key (the hub switches to it when it arrives)"
                if verb.startswith("will move") else "is told to bring it up")
        print(f"tunnel {t['name']} ({t['id']}) {verb}; the agent of machine "
              f"{t.get('gateway_machine', '')} {told}.")
        return OK
    print(f"tunnel {t['name']} ({t['id']}) {verb}; the token is good once, until {t['token_expires']}.")
    print("Run this on the gateway host inside the private network:\n")
    print(f"  {t['install_command']}\n")
    return OK


def cmd_list(args: argparse.Namespace) -> int:
    data = client().request("GET", "/api/v2/tunnels", params={"limit": 1000})["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table([_flat(t) for t in data], COLUMNS,
                     empty="no tunnels; create one with 'overcast tunnels create NAME --cidr CIDR'")
    return OK


def cmd_show(args: argparse.Namespace) -> int:
    t = client().request("GET", f"/api/v2/tunnels/{q(args.tunnel)}")["data"]
    if args.json:
        output.emit_json(t)
    else:
        f = _flat(t)
        output.fields(f, [k for k in FIELDS if f.get(k) not in ("", None)])
    return OK


def cmd_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "cidrs": args.cidr, "excluded": args.exclude or []}
    if args.gateway_agent:
        body["gateway_agent"] = args.gateway_agent
    return _with_command(client().request("POST", "/api/v2/tunnels", body)["data"], args.json, "created")


def cmd_rotate(args: argparse.Namespace) -> int:
    t = client().request("POST", f"/api/v2/tunnels/{q(args.tunnel)}/actions/rotate")["data"]
    return _with_command(t, args.json, "will move to a new gateway key")


def cmd_delete(args: argparse.Namespace) -> int:
    c = client()
    for t in args.tunnels:
        c.request("DELETE", f"/api/v2/tunnels/{q(t)}", params={"force": "true"} if args.force else None)
        if not args.json:
            print(f"deleted {t}")
    return OK


def register(sub: Any) -> Any:
    """Add ``overcast tunnels`` to ``sub``; return its subcommand group."""
    p = sub.add_parser("tunnels", help="WireGuard tunnels to private networks",
                       description="Without a subcommand: list tunnels.")
    json_opt(p)
    p.set_defaults(func=cmd_list)
    g = p.add_subparsers(dest="cmd", metavar="COMMAND")
    c = g.add_parser("list", help="list tunnels with their health")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_list)
    c = g.add_parser("create", help="create a tunnel and print its gateway's install command",
                     description="The CIDRs are the private networks the gateway reaches; "
                     "they may not overlap another tunnel's or the controller's own networks.")
    c.add_argument("name")
    c.add_argument("--cidr", action="append", required=True, metavar="CIDR",
                   help="a private network to reach (repeat for more)")
    c.add_argument("--exclude", action="append", metavar="CIDR",
                   help="a part of the CIDRs not to route (repeat for more)")
    c.add_argument("--gateway-agent", metavar="MACHINE",
                   help="a machine (id or name) whose connected Overcast agent (as root) brings "
                   "the tunnel up, instead of the install command")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_create)
    c = g.add_parser("show", help="show a tunnel")
    c.add_argument("tunnel", help="id or name")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_show)
    c = g.add_parser("rotate", help="rotate the gateway's key: prints a new install command")
    c.add_argument("tunnel", help="id or name")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_rotate)
    c = g.add_parser("delete", help="delete tunnels")
    c.add_argument("tunnels", nargs="+", metavar="TUNNEL")
    c.add_argument("--force", action="store_true",
                   help="delete even while machines are reached through it")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_delete)
    return g
