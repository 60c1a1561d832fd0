"""``overcast``: the controller, admin commands, and a client of the REST API.

Exit codes: 0 success, 1 the request was refused or failed, 2 wrong usage, 3 not logged in /
authentication refused, 4 not found, 5 controller unreachable or server error."""

from __future__ import annotations

import argparse
import getpass
import re
import secrets
import socket
import sys
import time
from typing import Any
from urllib.parse import quote

from controller.cli import (
    agents,
    clouds,
    inventory,
    keys,
    monitoring,
    ops,
    output,
    rules,
    runs,
    schedules,
    scripts,
    shell,
    tunnels,
)
from controller.cli.client import (
    AUTH,
    FAILED,
    OK,
    UNREACHABLE,
    USAGE,
    Client,
    CliError,
    Login,
    fetch_ca,
    warn,
)

_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> int:
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 3600, 90m, 12h or 30d")
    return int(m.group(1)) * _UNITS[m.group(2)]


# ---- admin commands (act on the data directory; through the running controller if any) ----

def _settings(args: argparse.Namespace) -> Any:
    from controller import settings as settings_mod

    return settings_mod.load(args.config, overrides={
        "data_dir": getattr(args, "data_dir", None), "http": getattr(args, "http", None),
        "grpc": getattr(args, "grpc", None), "agents": getattr(args, "agents", None),
        "external_url": getattr(args, "external_url", None),
        "tls": getattr(args, "tls", None)})


def cmd_controller(args: argparse.Namespace) -> int:
    import asyncio

    from controller import log as log_mod
    from controller.app import serve
    from controller.errors import OvercastError

    ops.check_init_flags(args)
    if args.init:
        return ops.cmd_init(args)
    settings = _settings(args)
    log_mod.setup(settings.log_level, settings.log_json)
    ready = asyncio.Event()
    try:
        asyncio.run(serve(settings, ready))
    except OvercastError as exc:  # a start-up problem: the settings or the machine, never a crash
        field = exc.details.get("field")
        if field and f"setting: {field}" not in exc.message:
            print(f"overcast: cannot start: {exc.message} (setting: {field})", file=sys.stderr)
        else:
            print(f"overcast: cannot start: {exc.message}", file=sys.stderr)
        return FAILED
    except (OSError, ValueError) as exc:  # anything the checks above missed: still no traceback
        what = "stopped" if ready.is_set() else "cannot start"
        print(f"overcast: {what}: {_os_message(exc)}", file=sys.stderr)
        return FAILED
    return OK


def _os_message(exc: BaseException) -> str:
    """``strerror: filename`` for an OSError, the text of anything else."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or exc.__class__.__name__


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        pw = sys.stdin.readline().rstrip("\n")
        if not pw:
            raise CliError("no password on standard input", USAGE)
        return pw
    if not sys.stdin.isatty():
        raise CliError("give the password with --password-stdin (standard input is not a terminal)", USAGE)
    pw = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != pw:
        raise CliError("the passwords differ", USAGE)
    return pw


def _offline_services(settings: Any, mode: str = "rw") -> Any:
    from pathlib import Path

    from controller.services import build_services
    from controller.store import open_store, set_memory

    d = Path(settings.data_dir)
    if d.exists() and not d.is_dir():
        raise CliError(f"the data directory {d} is not a directory", FAILED)
    if mode == "rw":
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    elif not (d / "store").exists():
        raise CliError(f"no Overcast data in {d}", FAILED)
    set_memory(settings.store_cache_mib << 20, settings.store_write_buffer_mib << 20)
    return build_services(settings, open_store(d / "store", mode), migrate=mode == "rw")


def _wait_for_controller(settings: Any, method: str, path: str, body: dict[str, Any],
                         wait: float) -> dict[str, Any]:
    """The store is locked: a controller holds it but has not bound its admin socket yet
    (it is starting). Retry through the socket for up to ``wait`` seconds."""
    from controller.admin import call

    warn(f"the store in {settings.data_dir} is in use: waiting for the running controller...")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.2)
        result = call(settings, method, path, body)
        if result is not None:
            return result
    raise CliError(f"the store in {settings.data_dir} is held by another process (a controller "
                   f"starting or stuck?), and no controller answered on {settings.admin_socket} "
                   f"within {wait:g} s; try again, or stop that process", FAILED)


def _give_back(data_dir: str) -> None:
    """Files made as root in another user's data directory go back to that user."""
    from controller.ops.owner import give_back

    give_back(data_dir)


def _adduser_offline(settings: Any, args: argparse.Namespace, password: str) -> dict[str, Any] | None:
    """Create the user on the store itself; None when a controller holds it (it is starting)."""
    import asyncio

    from controller.admin import admin_actor
    from controller.store import StoreLocked

    try:
        services = _offline_services(settings)
    except StoreLocked:
        return None
    try:
        user, org = asyncio.run(services.accounts.create_user(
            admin_actor(), args.email, password, is_admin=args.admin, org_name=args.org))
    finally:
        services.store.close()
        _give_back(settings.data_dir)
    return {"user": user, "org": {"id": org["id"], "name": org["name"]}}


def cmd_adduser(args: argparse.Namespace) -> int:
    from controller.admin import call

    settings = _settings(args)
    password = _read_password(args)
    body = {"email": args.email, "password": password, "admin": args.admin, "org": args.org}
    result = call(settings, "POST", "/admin/users", body)
    if result is None:  # no controller running: open the store ourselves
        result = _adduser_offline(settings, args, password)
    if result is None:  # a controller holds the store but is still starting: it answers soon
        result = _wait_for_controller(settings, "POST", "/admin/users", body, args.wait)
    if args.json:
        output.emit_json(result)
    else:
        u = result["user"]
        print(f"created {'admin ' if u.get('is_admin') else ''}user {u['email']} ({u['id']}) "
              f"in organisation {result['org']['name']}")
    return OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from controller.admin import call

    settings = _settings(args)
    result = call(settings, "GET", "/admin/audit/verify")
    if result is None:
        services = _offline_services(settings, "ro")
        try:
            result = services.audit.verify().to_dict()
        finally:
            services.store.close()
            _give_back(settings.data_dir)
    if args.json:
        output.emit_json(result)
    elif result["ok"]:
        print(f"audit log intact: {result['entries']} entries verified")
    else:
        print(f"audit log BROKEN at entry {result['broken_at']}: {result['reason']} "
              f"({result['entries']} entries before it verify)")
    return OK if result["ok"] else FAILED


# ---- client commands ----------------------------------------------------------------------

def _client() -> tuple[Client, Login]:
    login = Login.load()
    return Client(login.url, login.token, login.ca_file), login


def cmd_login(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    if not re.match(r"^https?://[^/]+$", url):
        raise CliError("URL must be http(s)://host[:port]", USAGE)
    ca_file = str(fetch_ca(url, args.ca_fingerprint)) if args.ca_fingerprint else ""
    if args.token:
        client = Client(url, args.token, ca_file)
        info = client.request("GET", "/api/v2/auth")["data"]
        login = Login(url, args.token, "", info["user"]["email"], ca_file)
    else:
        email = args.email or input("E-mail: ").strip()
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        elif sys.stdin.isatty():
            password = getpass.getpass("Password: ")
        else:
            raise CliError("give the password with --password-stdin, or a token with --token", USAGE)
        client = Client(url, "", ca_file)
        body = {"email": email, "password": password}
        if args.org:
            body["org"] = args.org
        info = client.request("POST", "/api/v2/auth/sessions", body)["data"]
        client.csrf = info["csrf_token"]
        # unique even for two logins within a second (a token name is unique per user)
        name = args.token_name or (f"cli {getpass.getuser()}@{socket.gethostname()} "
                                   f"{time.strftime('%Y-%m-%d %H:%M:%S')} {secrets.token_hex(3)}")
        tok = client.request("POST", "/api/v2/auth/tokens", {"name": name, "ttl": args.ttl} if args.ttl else {"name": name})
        client.request("DELETE", "/api/v2/auth/sessions")  # the token replaces the session
        login = Login(url, tok["token"], tok["id"], info["user"]["email"], ca_file)
    path = login.save()
    org = (info.get("org") or {}).get("name", "")
    print(f"logged in to {url} as {login.email}{' in ' + org if org else ''} (saved in {path})")
    return OK


def cmd_logout(args: argparse.Namespace) -> int:
    from controller.cli.client import config_dir

    client, login = _client()
    if login.token_id:
        try:
            client.request("DELETE", f"/api/v2/auth/tokens/{quote(login.token_id, safe='')}")
        except CliError as exc:
            warn(f"could not revoke the token: {exc.message}")
    (config_dir() / "cli.json").unlink(missing_ok=True)
    print(f"logged out of {login.url}")
    return OK


def cmd_whoami(args: argparse.Namespace) -> int:
    client, _ = _client()
    info = client.request("GET", "/api/v2/auth")["data"]
    if args.json:
        output.emit_json(info)
        return OK
    u, org = info["user"], info.get("org") or {}
    print(f"{u['email']}{' (platform admin)' if u.get('is_admin') else ''}")
    print(f"organisation: {org.get('name', '-')} ({info.get('role') or 'no role'})")
    print(f"signed in with: {info['auth']}   url: {client.url}")
    return OK


def _log_row(e: dict[str, Any]) -> dict[str, Any]:
    actor = e.get("actor", {})
    target = e.get("target", {})
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"])),
            "who": actor.get("email") or actor.get("kind", ""),
            "action": e["action"], "outcome": e["outcome"],
            "target": f"{target.get('kind', '')}:{target.get('id', '')}" if target.get("id") else target.get("kind", ""),
            "from": (e.get("source") or {}).get("ip", ""), "seq": e.get("seq")}


LOG_COLUMNS = ["seq", "time", "who", "action", "outcome", "target", "from"]


def cmd_logs(args: argparse.Namespace) -> int:
    client, _ = _client()
    params = {"search": args.search, "limit": args.limit, "action": args.action,
              "user": args.user, "since": args.since, "until": args.until, "outcome": args.outcome}
    head = 0
    if args.follow:  # where the log ends now, whatever the filters: following starts there
        newest = client.request("GET", "/api/v2/logs", params={"limit": 1})["data"]
        head = int(newest[0]["seq"]) if newest else 0
    resp = client.request("GET", "/api/v2/logs", params=params)
    entries = list(reversed(resp["data"]))  # oldest first, like a log
    _print_logs(entries, args.json, header=True)
    if not args.follow:
        return OK
    # from the newest entry shown or the head, whichever is later: never older history (a
    # --since in the future shows nothing at first, and must not show everything after)
    last = max([head, *(int(e["seq"]) for e in entries)])
    follow = {k: v for k, v in params.items() if k != "since"}
    try:
        while True:
            time.sleep(args.interval)
            new = client.request("GET", "/api/v2/logs", params=dict(follow, after=last, limit=1000))["data"]
            if new:
                _print_logs(new, args.json, header=False)
                last = max(int(e["seq"]) for e in new)
    except KeyboardInterrupt:
        return OK


def _print_logs(entries: list[dict[str, Any]], as_json: bool, header: bool) -> None:
    if as_json:
        for e in entries:  # one JSON object per line: friendly to jq and to --follow
            print(output.json.dumps(e, default=str), flush=True)
        return
    rows = [_log_row(e) for e in entries]
    if header:
        output.table(rows, LOG_COLUMNS, empty="no audit entries")
    else:
        for r in rows:
            print("  ".join(str(r[c]) for c in LOG_COLUMNS), flush=True)
    sys.stdout.flush()


def cmd_token_create(args: argparse.Namespace) -> int:
    client, _ = _client()
    body: dict[str, Any] = {"name": args.name}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    tok = client.request("POST", "/api/v2/auth/tokens", body)
    if args.json:
        output.emit_json(tok)
    else:
        print(tok["token"])
        warn(f"token {tok['name']!r} ({tok['id']}) expires {tok['expires'] or 'never'}; "
             "it is shown only this once")
    return OK


def cmd_token_list(args: argparse.Namespace) -> int:
    client, _ = _client()
    data = client.request("GET", "/api/v2/auth/tokens", params={"limit": 1000})["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table(data, ["id", "name", "created_by", "created", "expires", "last_used", "revoked"],
                     empty="no tokens")
    return OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    client, _ = _client()
    for tid in args.ids:
        tok = client.request("DELETE", f"/api/v2/auth/tokens/{quote(tid, safe='')}")
        if args.json:
            output.emit_json(tok)
        else:
            print(f"revoked {tok['id']} ({tok['name']})")
    return OK


# ---- parser -----------------------------------------------------------------------------

def _admin_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="settings file (TOML); default $OVERCAST_CONFIG, else "
                   "/etc/overcast/controller.toml if present, else <data_dir>/controller.toml")
    p.add_argument("--data-dir", help="data directory (overrides the settings)")


def parser() -> argparse.ArgumentParser:
    from overcast import __version__

    ap = argparse.ArgumentParser(
        prog="overcast", description="Overcast: one place for every cloud, server and agent.",
        epilog="Exit codes: 0 ok, 1 refused/failed, 2 usage, 3 authentication, 4 not found, "
               "5 unreachable/server error. Client commands read the login saved by "
               "'overcast login' (or OVERCAST_URL and OVERCAST_TOKEN).")
    ap.add_argument("--version", action="version", version=f"overcast {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("controller", help="run the controller")
    _admin_opts(p)
    p.add_argument("--http", help="HTTP listen address HOST:PORT (default 127.0.0.1:7080)")
    p.add_argument("--grpc", help="gRPC listen address HOST:PORT (default 127.0.0.1:7443)")
    p.add_argument("--agents", help="agents' (mTLS gRPC) listen address HOST:PORT "
                   "(default 127.0.0.1:7444)")
    p.add_argument("--external-url", help="the URL users and agents reach this controller at")
    p.add_argument("--tls", choices=["auto", "on", "off"], help="serve TLS (auto: unless on loopback)")
    ops.add_init_options(p)
    p.set_defaults(func=cmd_controller)

    p = sub.add_parser("adduser", help="create a user (and their organisation)")
    p.add_argument("email")
    p.add_argument("--admin", action="store_true", help="platform administrator")
    p.add_argument("--org", help="organisation to join (created, with the user as owner, if new)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--json", action="store_true", help="print the new user as JSON")
    # how long to wait for a controller that holds the store but is still starting
    p.add_argument("--wait", type=float, default=15.0, help=argparse.SUPPRESS)
    _admin_opts(p)
    p.set_defaults(func=cmd_adduser)

    p = sub.add_parser("audit", help="audit log administration")
    asub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    v = asub.add_parser("verify", help="check the audit hash chain; says where it breaks")
    v.add_argument("--json", action="store_true")
    _admin_opts(v)
    v.set_defaults(func=cmd_audit_verify)

    p = sub.add_parser("login", help="log in to a controller and save an API token")
    p.add_argument("url", help="the controller's URL, e.g. https://overcast.example.com")
    p.add_argument("--email", help="your e-mail (asked when missing)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    g.add_argument("--token", help="use this API token instead of a password")
    p.add_argument("--org", help="organisation to act in (default: your first)")
    p.add_argument("--ca-fingerprint", help="SHA-256 of the controller's CA, as printed at its start")
    p.add_argument("--token-name", help="name of the token the login creates")
    p.add_argument("--ttl", type=duration, help="token lifetime, e.g. 30d (default: the controller's)")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", help="revoke the saved token and forget the login")
    p.set_defaults(func=cmd_logout)

    p = sub.add_parser("whoami", help="who you are logged in as")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_whoami)

    p = sub.add_parser("logs", help="the audit log of your organisation")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--search")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--action", help="e.g. token.create, or token for all token actions")
    p.add_argument("--user", help="user id or e-mail")
    p.add_argument("--outcome", choices=["success", "denied", "failed"])
    p.add_argument("--since", help="ISO 8601 time")
    p.add_argument("--until", help="ISO 8601 time")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="SUBCOMMAND", required=True)
    c = tsub.add_parser("create", help="create a token and print it (once)")
    c.add_argument("name")
    c.add_argument("--ttl", type=duration, help="lifetime, e.g. 3600, 12h, 30d")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_token_create)
    c = tsub.add_parser("list", help="list tokens")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_token_list)
    c = tsub.add_parser("revoke", help="revoke tokens")
    c.add_argument("ids", nargs="+", metavar="ID")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_token_revoke)

    agents.register(sub, tsub, duration)
    clouds.register(sub)
    inventory.register(sub)
    keys.register(sub)
    shell.register(sub)
    runs.add_run(scripts.register(sub))
    runs.register(sub)
    tunnels.register(sub)
    monitoring.register(sub)
    schedules.register(sub)
    rules.register(sub)
    ops.register(sub)
    return ap


# options whose values may start with "-" (a descending sort: --sort -created); argparse
# would take such a value for an option, so it is joined to its option first: --sort=-created
_DASH_VALUE_OPTIONS = ("--sort",)


def _join_dash_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out.extend(argv[i:])
            break
        if (a in _DASH_VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-")
                and not argv[i + 1].startswith("--")):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        ap.print_help()
        return USAGE
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"overcast: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as exc:  # a file, a directory or a value on this machine
        print(f"overcast: {_os_message(exc)}", file=sys.stderr)
        return FAILED
    except Exception as exc:  # controller-side errors raised in admin commands
        from controller.errors import OvercastError

        if isinstance(exc, OvercastError):
            field = exc.details.get("field")
            print(f"overcast: {exc.message}{f' (field: {field})' if field else ''}", file=sys.stderr)
            return {401: AUTH, 403: AUTH, 404: 4}.get(exc.status, FAILED if exc.status < 500 else UNREACHABLE)
        raise


if __name__ == "__main__":
    sys.exit(main())
