"""``overcast keys``: the organisation's SSH keys."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from controller.cli import output
from controller.cli.client import OK, USAGE, CliError
from controller.cli.clouds import client, json_opt, q


def cmd_list(args: argparse.Namespace) -> int:
    data = client().request("GET", "/api/v2/keys", params={"limit": 1000})["data"]
    if args.json:
        output.emit_json(data)
    else:
        rows = [dict(k, default="yes" if k.get("default") else "") for k in data]
        output.table(rows, ["id", "name", "algorithm", "fingerprint", "default", "created"],
                     empty="no keys; add one with 'overcast keys generate NAME'")
    return OK


def _show(k: dict[str, Any], as_json: bool) -> int:
    if as_json:
        output.emit_json(k)
    else:
        output.fields(k, ["id", "name", "algorithm", "bits", "fingerprint", "default", "public",
                          "created", "created_by"])
    return OK


def cmd_generate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "generate": True, "algorithm": args.algorithm}
    if args.bits:
        body["bits"] = args.bits
    return _show(client().request("POST", "/api/v2/keys", body)["data"], args.json)


def cmd_add(args: argparse.Namespace) -> int:
    try:
        text = Path(args.private_file).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {args.private_file}: {exc.strerror or exc}", USAGE) from None
    return _show(client().request("POST", "/api/v2/keys", {"name": args.name, "private": text})["data"],
                 args.json)


def cmd_show(args: argparse.Namespace) -> int:
    params = {"private": "true"} if args.private else None
    k = client().request("GET", f"/api/v2/keys/{q(args.key)}", params=params)["data"]
    if args.private and not args.json:
        print(k["private"], end="" if k["private"].endswith("\n") else "\n")
        return OK
    return _show(k, args.json)


def cmd_edit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.cmd == "rename":
        body["name"] = args.name
    else:
        body["default"] = True
    return _show(client().request("PUT", f"/api/v2/keys/{q(args.key)}", body)["data"], args.json)


def cmd_delete(args: argparse.Namespace) -> int:
    c = client()
    for k in args.keys:
        c.request("DELETE", f"/api/v2/keys/{q(k)}")
        if not args.json:
            print(f"deleted {k}")
    return OK


def cmd_associate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"key": args.key, "user": args.user, "port": args.port,
                            "sudo": args.sudo}
    if args.no_deploy:
        body["deploy"] = False
    a = client().request("PUT", f"/api/v2/machines/{q(args.machine)}/actions/associate-key",
                         body)["data"]
    if args.json:
        output.emit_json(a)
    else:
        print(f"key {args.key} associated with {args.machine} for {a['user']} "
              f"(port {a['port']}; {a['deployed_via']})")
    return OK


def cmd_disassociate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"key": args.key}
    if args.no_deploy:
        body["deploy"] = False
    a = client().request("DELETE", f"/api/v2/machines/{q(args.machine)}/actions/disassociate-key",
                         body)["data"]
    if args.json:
        output.emit_json(a)
    else:
        print(f"key {args.key} disassociated from {args.machine} ({a['removed_via']})")
    return OK


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="SSH keys (private halves are kept encrypted)",
                       description="Without a subcommand: list keys.")
    json_opt(p)
    p.set_defaults(func=cmd_list)
    g = p.add_subparsers(dest="cmd", metavar="COMMAND")
    c = g.add_parser("list", help="list keys")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_list)
    c = g.add_parser("generate", help="generate a key pair (ed25519; RSA with --algorithm rsa)")
    c.add_argument("name")
    c.add_argument("--algorithm", choices=["ed25519", "rsa"], default="ed25519")
    c.add_argument("--bits", type=int, choices=[2048, 3072, 4096, 8192], help="RSA only (4096)")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_generate)
    c = g.add_parser("add", help="import a private key (OpenSSH or PEM, without passphrase)")
    c.add_argument("name")
    c.add_argument("--private-file", required=True, metavar="FILE")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_add)
    c = g.add_parser("show", help="show a key; --private prints its private half (audited)")
    c.add_argument("key", help="id or name")
    c.add_argument("--private", action="store_true")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_show)
    c = g.add_parser("rename", help="rename a key")
    c.add_argument("key")
    c.add_argument("name")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_edit)
    c = g.add_parser("default", help="make a key the organisation's default")
    c.add_argument("key")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_edit)
    c = g.add_parser("delete", help="delete keys")
    c.add_argument("keys", nargs="+", metavar="KEY")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_delete)
    c = g.add_parser("associate", help="let a key in on a machine: its public half is added to "
                                       "the user's authorized_keys (through the agent, or SSH)")
    c.add_argument("key", help="id or name")
    c.add_argument("machine", help="id or name")
    c.add_argument("--user", default="root", help="login user (default root)")
    c.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    c.add_argument("--sudo", action="store_true", help="the user may sudo")
    c.add_argument("--no-deploy", action="store_true",
                   help="only record the association (the key is there already)")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_associate)
    c = g.add_parser("disassociate", help="remove a key from a machine's authorized_keys")
    c.add_argument("key", help="id or name")
    c.add_argument("machine", help="id or name")
    c.add_argument("--no-deploy", action="store_true",
                   help="only forget the association (leave authorized_keys alone)")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_disassociate)
