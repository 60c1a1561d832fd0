"""``overcast scripts``: the organisation's script library (add from a file, text, a URL or a
git repository; list, show, edit, refresh, delete, download).

Each subcommand is one ``add_parser`` on the group :func:`register` returns, so another
module adds one by registering on it: ``runs.add_run(scripts.register(sub))``."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from controller.cli import output
from controller.cli.client import FAILED, OK, UNREACHABLE, USAGE, Client, CliError, _http_error
from controller.cli.clouds import client, json_opt, q

COLUMNS = ["id", "name", "exec_type", "location_type", "entrypoint", "size", "created"]
FIELDS = ["id", "name", "description", "exec_type", "location_type", "source", "ref", "commit",
          "entrypoint", "sha256", "size", "tags", "fetched", "created", "created_by"]


def cmd_list(args: argparse.Namespace) -> int:
    data = client().request("GET", "/api/v2/scripts", params={"limit": 1000})["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table(data, COLUMNS, empty="no scripts; add one with 'overcast scripts add NAME --file FILE'")
    return OK


def _show(s: dict[str, Any], as_json: bool) -> int:
    if as_json:
        output.emit_json(s)
    else:
        output.fields(s, [f for f in FIELDS if s.get(f) not in ("", None, {})])
    return OK


def cmd_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "exec_type": "ansible" if args.ansible else "executable"}
    if args.file is not None:
        try:
            text = Path(args.file).read_bytes().decode("utf-8")
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror or exc}", USAGE) from None
        except UnicodeDecodeError:
            raise CliError(f"{args.file} is not a text file: serve an archive from a URL "
                           "(--url) or a repository (--git)", USAGE) from None
        body.update(location_type="inline", script=text)
    elif args.inline is not None:
        body.update(location_type="inline", script=args.inline)
    elif args.url is not None:
        body.update(location_type="url", script=args.url)
    else:
        if args.ref and "#" in args.git:
            raise CliError("give the ref either after # in the URL or with --ref, not both", USAGE)
        body.update(location_type="git", script=args.git + (f"#{args.ref}" if args.ref else ""))
    if args.ref and args.git is None:
        raise CliError("--ref is for --git repositories", USAGE)
    if args.entrypoint:
        body["entrypoint"] = args.entrypoint
    if args.description:
        body["description"] = args.description
    return _show(client().request("POST", "/api/v2/scripts", body)["data"], args.json)


def cmd_show(args: argparse.Namespace) -> int:
    return _show(client().request("GET", f"/api/v2/scripts/{q(args.script)}")["data"], args.json)


def cmd_edit(args: argparse.Namespace) -> int:
    body = {k: v for k, v in (("name", args.name), ("description", args.description)) if v is not None}
    if not body:
        raise CliError("nothing to change: give --name or --description", USAGE)
    return _show(client().request("PUT", f"/api/v2/scripts/{q(args.script)}", body)["data"], args.json)


def cmd_refresh(args: argparse.Namespace) -> int:
    r = client().request("POST", f"/api/v2/scripts/{q(args.script)}/refresh")
    s = r["data"]
    if args.json:
        output.emit_json(dict(s, changed=r.get("changed")))
    else:
        what = "changed" if r.get("changed") else "unchanged"
        commit = f", commit {s['commit'][:12]}" if s.get("commit") else ""
        print(f"refreshed {s['name']}: {what} (sha256 {s['sha256'][:16]}{commit})")
    return OK


def cmd_delete(args: argparse.Namespace) -> int:
    c = client()
    for s in args.scripts:
        c.request("DELETE", f"/api/v2/scripts/{q(s)}")
        if not args.json:
            print(f"deleted {s}")
    return OK


def _get_bytes(c: Client, path: str) -> tuple[bytes, dict[str, str]]:
    """GET ``path`` as bytes (the JSON client refuses anything else); errors as the client's."""
    req = urllib.request.Request(c.url + path, method="GET")
    if c.token:
        req.add_header("Authorization", "Bearer " + c.token)
    try:
        with urllib.request.urlopen(req, timeout=60, context=c._ctx) as resp:  # noqa: S310
            return resp.read(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the controller at {c.url}: {getattr(exc, 'reason', exc)}",
                       UNREACHABLE) from None


def cmd_download(args: argparse.Namespace) -> int:
    data, headers = _get_bytes(client(), f"/api/v2/scripts/{q(args.script)}/file")
    want = headers.get("x-script-sha256", "")
    if want and hashlib.sha256(data).hexdigest() != want:
        raise CliError("the download does not match the script's sha256: try again", FAILED)
    if args.output in (None, "-"):
        if headers.get("content-type", "").startswith("application/gzip") and sys.stdout.isatty():
            raise CliError("the script is a .tar.gz archive: give -o FILE (or redirect the "
                           "output)", USAGE)
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return OK
    tmp = f"{args.output}.part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({len(data)} bytes, sha256 {want or hashlib.sha256(data).hexdigest()})")
    return OK


def register(sub: Any) -> Any:
    """Add ``overcast scripts`` to ``sub``; return its subcommand group (for ``run``)."""
    p = sub.add_parser("scripts", help="the script library (fetched once, stored as reviewed)",
                       description="Without a subcommand: list scripts.")
    json_opt(p)
    p.set_defaults(func=cmd_list)
    g = p.add_subparsers(dest="cmd", metavar="COMMAND")
    c = g.add_parser("list", help="list scripts")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_list)
    c = g.add_parser("add", help="add a script from a file, text, a URL or a git repository",
                     description="The content is fetched once, now, and stored with its "
                     "sha256: runs use exactly that until 'overcast scripts refresh'. A URL "
                     "serves one text script or a .tar.gz archive (then --entrypoint); a git "
                     "repository needs --entrypoint. Limits: 512 KiB inline, 10 MiB fetched.")
    c.add_argument("name")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", metavar="PATH", help="a local script file (sent as text)")
    src.add_argument("--inline", metavar="TEXT", help="the script's text")
    src.add_argument("--url", metavar="URL", help="an http(s) URL of a script or a .tar.gz")
    src.add_argument("--git", metavar="URL", help="an http(s) git repository URL")
    c.add_argument("--ref", help="with --git: a branch, tag or full commit id")
    c.add_argument("--entrypoint", metavar="PATH", help="the file to run inside an archive or repository")
    c.add_argument("--ansible", action="store_true", help="an Ansible playbook (default: an executable)")
    c.add_argument("--description", metavar="TEXT")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_add)
    c = g.add_parser("show", help="show a script (its content: 'download')")
    c.add_argument("script", help="id or name")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_show)
    c = g.add_parser("edit", help="rename a script or change its description")
    c.add_argument("script", help="id or name")
    c.add_argument("--name")
    c.add_argument("--description")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_edit)
    c = g.add_parser("refresh", help="fetch a URL or repository script again")
    c.add_argument("script", help="id or name")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_refresh)
    c = g.add_parser("delete", help="delete scripts")
    c.add_argument("scripts", nargs="+", metavar="SCRIPT")
    json_opt(c, inherit=True)
    c.set_defaults(func=cmd_delete)
    c = g.add_parser("download", help="download a script's text or .tar.gz archive")
    c.add_argument("script", help="id or name")
    c.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: standard output)")
    c.set_defaults(func=cmd_download)
    return g
