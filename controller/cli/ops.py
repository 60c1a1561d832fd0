"""``overcast controller --init``, ``overcast backup``, ``overcast restore`` and
``overcast doctor``: admin commands on the data directory, through the running controller's
admin socket when one runs (RocksDB has one writer), on the files themselves otherwise."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from controller.cli import output
from controller.cli.client import FAILED, OK, USAGE, CliError, warn

INIT_FLAGS = ("admin_email", "admin_password_file", "admin_password_stdin", "org", "json")


def add_init_options(p: argparse.ArgumentParser) -> None:
    """The --init flags of ``overcast controller``."""
    g = p.add_argument_group("--init: prepare a data directory, a settings file and the first "
                             "admin, then exit (idempotent)")
    g.add_argument("--init", action="store_true",
                   help="prepare and exit instead of running (for automation and containers)")
    g.add_argument("--admin-email", help="the first platform admin's e-mail (made only when "
                   "the store has no user)")
    pw = g.add_mutually_exclusive_group()
    pw.add_argument("--admin-password-file", metavar="FILE", help="read the admin's password "
                    "from FILE (its first line)")
    pw.add_argument("--admin-password-stdin", action="store_true",
                    help="read the admin's password from standard input")
    g.add_argument("--org", help="the admin's organisation (default: one named after the e-mail)")
    g.add_argument("--json", action="store_true", help="print what was made as JSON")


def _init_password(args: argparse.Namespace) -> str:
    if args.admin_password_file:
        try:
            with open(args.admin_password_file, encoding="utf-8") as f:
                pw = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise CliError(f"cannot read the admin password: {exc.strerror or exc}: "
                           f"{args.admin_password_file}", USAGE) from None
        except UnicodeDecodeError:
            raise CliError(f"{args.admin_password_file} is not UTF-8 text", USAGE) from None
    elif args.admin_password_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        raise CliError("--init needs the admin's password: --admin-password-file FILE or "
                       "--admin-password-stdin", USAGE)
    if not pw:
        raise CliError("the admin password is empty", USAGE)
    return pw


def _wait_call(settings: Any, method: str, path: str, body: dict[str, Any],
               timeout: float = 30.0) -> dict[str, Any]:
    """The store is locked but no controller answers yet (it is starting): wait for it."""
    from controller.cli.main import _wait_for_controller

    return _wait_for_controller(settings, method, path, body, timeout)


def cmd_init(args: argparse.Namespace) -> int:
    from controller.admin import call
    from controller.ops import init
    from controller.settings import _default_data_dir, config_path
    from controller.store import StoreLocked

    if not args.admin_email:
        raise CliError("--init needs --admin-email EMAIL (the first platform admin)", USAGE)
    password = _init_password(args)
    env = dict(os.environ)
    given = {k: getattr(args, k, None) for k in init.WRITTEN}
    if given["data_dir"]:
        given["data_dir"] = str(Path(given["data_dir"]).absolute())
    given = {k: v for k, v in given.items() if v is not None}
    guess = given.get("data_dir") or env.get("OVERCAST_DATA_DIR") or _default_data_dir()
    config = init.default_config(args.config, env, guess)
    settings = init.effective_settings(config, given, env)
    email = init.check_admin(args.admin_email, password)
    settings.validate()
    result = init.prepare(settings, config, given)
    body = {"email": email, "password": password, "org": args.org}
    answer = call(settings, "GET", "/admin/status")
    if answer is None:
        try:
            init.init_offline(settings, result, email, password, args.org)
        except StoreLocked:
            answer = {}
    if answer is not None:  # a controller runs (or is starting) on this data directory
        made = call(settings, "POST", "/admin/init", body) or _wait_call(
            settings, "POST", "/admin/init", body)
        result.online = True
        result.created.update(secret_key=False, ca=False, store=False, admin=made["created"])
        result.admin, result.ca_fingerprint = made["admin"], "sha256:" + made["ca_fingerprint"]
        if made["note"]:
            result.notes.append(made["note"])
    if result.admin:
        result.admin = {"id": result.admin["id"], "email": result.admin["email"]}
    reads = config_path(None, env, {"data_dir": settings.data_dir})[0]
    start = "overcast controller" + ("" if Path(reads).absolute() == config.absolute()
                                     else f" --config {config}")
    if args.json:
        output.emit_json(result.to_dict())
    else:
        _print_init(result, start)
    for note in result.notes:
        warn(f"overcast: {note}")
    return OK


def _print_init(result: Any, start: str) -> None:
    words = {"data_dir": "the data directory", "config": f"the settings file {result.config}",
             "secret_key": "the secret key", "ca": "the CA", "store": "the store",
             "admin": f"the admin {(result.admin or {}).get('email', '')}"}
    made = [words[k] for k, v in result.created.items() if v]
    if made:
        print(f"initialised {result.data_dir}: made {', '.join(made)}")
    else:
        print(f"{result.data_dir} is already initialised: nothing changed")
    if result.admin:
        print(f"admin: {result.admin['email']} ({result.admin['id']})")
    print(f"settings: {result.config}")
    if result.ca_fingerprint:
        print(f"CA fingerprint: {result.ca_fingerprint}")
    if not result.online:
        print(f"start it with: {start}")


# ---- backup and restore -----------------------------------------------------------------

def cmd_backup(args: argparse.Namespace) -> int:
    from controller.admin import call
    from controller.cli.main import _settings
    from controller.ops.backup import make_backup
    from controller.ops.doctor import size_text
    from controller.ops.owner import give_back
    from controller.store import StoreLocked, open_store

    settings = _settings(args)
    dest = str(Path(args.dir).absolute())
    body = {"dir": dest}
    result = call(settings, "POST", "/admin/backup", body, timeout=args.timeout)
    if result is None:
        store_dir = Path(settings.data_dir) / "store"
        if not store_dir.is_dir():
            raise CliError(f"no Overcast data in {settings.data_dir} (no store): nothing to "
                           "back up", FAILED)
        try:
            store = open_store(store_dir, "rw")
        except StoreLocked:
            store = None
        if store is None:
            result = _wait_call(settings, "POST", "/admin/backup", body)
        else:
            try:
                result = make_backup(store, settings, dest, online=False)
            finally:
                store.close()
                give_back(settings.data_dir)
    if args.json:
        output.emit_json(result)
        return OK
    how = "through the running controller" if result["online"] else "from the stopped controller's store"
    c = result["counts"]
    print(f"backed up {settings.data_dir} to {result['dir']} ({how}): "
          f"{size_text(result['bytes'])} in {result['files']} files, {result['seconds']:.2f} s")
    print(f"  {c['user']} users, {c['org']} organisations, {c['agent']} agents, {c['cloud']} "
          f"clouds, {c['machine']} machines; audit head {result['audit_head']['seq']}")
    if result["secret_key"]["source"] == "setting":
        warn("the secret key is the secret_key setting, not in the backup: keep it with the "
             "backup (stored credentials do not open without it)")
    return OK


def cmd_restore(args: argparse.Namespace) -> int:
    from controller.admin import call
    from controller.cli.main import _settings
    from controller.ops.backup import restore, verify_backup

    settings = _settings(args)
    src = str(Path(args.dir).absolute())
    if args.check:
        manifest = verify_backup(Path(src))
        if args.json:
            output.emit_json({k: v for k, v in manifest.items() if k != "files"})
        else:
            print(f"{src}: a complete backup ({len(manifest['files'])} files match their "
                  f"checksums), made {manifest['created']} on {manifest['host']} by Overcast "
                  f"{manifest['overcast_version']}")
        return OK
    if call(settings, "GET", "/admin/status") is not None:
        raise CliError(f"a controller is running on {settings.data_dir}: stop it before "
                       "restoring into its data directory", FAILED)
    result = restore(src, settings, force=args.force)
    if args.json:
        output.emit_json(result)
    else:
        c = result["counts"]
        print(f"restored {src} (made {result['created']} on {result['host']}) into "
              f"{result['data_dir']}: {c['user']} users, {c['agent']} agents, {c['cloud']} "
              f"clouds; audit head {result['audit_head']['seq']}")
        if result["replaced"]:
            print(f"what was in {result['data_dir']} before is in {result['replaced']}")
        print("start the controller on it; agents reconnect to the external URL they know")
    for note in result["notes"]:
        warn(f"overcast: {note}")
    return OK


# ---- doctor -------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from controller.admin import call
    from controller.errors import OvercastError
    from controller.ops.doctor import FAIL, Check, report, run_offline
    from controller.settings import config_path, load

    env = dict(os.environ)
    overrides = {"data_dir": getattr(args, "data_dir", None)}
    path, _ = config_path(args.config, env, overrides)
    where = str(path) if path.is_file() else "defaults and OVERCAST_* variables"
    try:
        settings = load(args.config, overrides=overrides)
    except OvercastError as exc:
        result = report("offline", [Check("settings", FAIL, exc.message, f"correct {where}")])
        settings = None
    if settings is not None:
        result = call(settings, "GET", "/admin/doctor", timeout=args.timeout) or \
            run_offline(settings, where)
    if args.json:
        output.emit_json(result)
    else:
        _print_doctor(result, settings.data_dir if settings else "")
    return OK if result["ok"] else FAILED


def _print_doctor(result: dict[str, Any], data_dir: str) -> None:
    if result["mode"] == "online":
        print(f"checked the controller running on {data_dir} (through its admin socket)")
    else:
        print(f"checked {data_dir or 'the settings'} (no controller running: the files)")
    width = max(len(c["name"]) for c in result["checks"])
    for c in result["checks"]:
        print(f"{c['status']:<5} {c['name']:<{width}}  {c['message']}")
        if c["fix"] and c["status"] in ("warn", "fail"):
            print(f"{'':<5} {'':<{width}}  fix: {c['fix']}")
    f, w = result["failures"], result["warnings"]
    if f:
        print(f"{f} failure{'s' if f > 1 else ''}, {w} warning{'s' if w != 1 else ''}")
    elif w:
        print(f"no failures; {w} warning{'s' if w > 1 else ''} (exit 0)")
    else:
        print("all checks passed")


def register(sub: Any) -> None:
    from controller.cli.main import _admin_opts

    p = sub.add_parser("backup", help="back up the data directory (online: through the running "
                       "controller) into a new directory")
    p.add_argument("dir", metavar="DIR", help="a new or empty directory (not in the data directory)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=3600.0, help=argparse.SUPPRESS)
    _admin_opts(p)
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="restore a backup into a data directory (the controller "
                       "stopped)")
    p.add_argument("dir", metavar="DIR", help="the backup directory")
    p.add_argument("--force", action="store_true", help="restore into a data directory that has "
                   "data (moved aside to <data_dir>/replaced-<time>/, not deleted)")
    p.add_argument("--check", action="store_true", help="only check the backup (checksums, "
                   "versions); restore nothing")
    p.add_argument("--json", action="store_true")
    _admin_opts(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("doctor", help="check the settings, certificates, disk, clocks and store; "
                       "say what to fix (exit 1 on a failure)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    _admin_opts(p)
    p.set_defaults(func=cmd_doctor)


def check_init_flags(args: argparse.Namespace) -> None:
    """--init's flags without --init are a usage error (they would be silently ignored)."""
    given = [f for f in INIT_FLAGS if getattr(args, f, None)]
    if given and not args.init:
        names = ", ".join("--" + f.replace("_", "-") for f in given)
        raise CliError(f"{names} only go{'es' if len(given) == 1 else ''} with --init", USAGE)
