"""CLI commands for clouds: add (credentials from flags, files or standard input, never
echoed), list, show, remove, poll; providers; jobs, and waiting for jobs (``--wait``) while
showing their progress. What clouds hold (machines, volumes, networks, DNS, sizes, images,
locations), tags and costs are in ``controller.cli.inventory``."""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from controller.cli import output
from controller.cli.client import FAILED, OK, USAGE, Client, CliError, Login, warn

TERMINAL = ("succeeded", "failed")
WAIT_INTERVAL = 0.5  # seconds between looks at a job


def client() -> Client:
    login = Login.load()
    return Client(login.url, login.token, login.ca_file)


def q(value: str) -> str:
    """One path segment: an id is never a path or a query string."""
    return quote(value, safe="")


def json_opt(p: argparse.ArgumentParser, inherit: bool = False) -> None:
    # inherit: a subcommand keeps a --json given before it (`machines --json ID`)
    if inherit:
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print JSON (for scripts)")
    else:
        p.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def wait_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="wait for the job to end, showing its progress; exit 1 if it fails")


def key_values(items: list[str] | None, what: str, bare: bool = True) -> dict[str, str]:
    """``k=v`` arguments as a dict (``k`` alone is an empty value when ``bare``)."""
    out: dict[str, str] = {}
    for item in items or []:
        k, eq, v = item.partition("=")
        if not k.strip() or (not eq and not bare):
            raise CliError(f"{what} expects KEY=VALUE, not {item!r}", USAGE)
        out[k.strip()] = v
    return out


def money(cost: dict[str, Any] | None) -> str:
    if not cost:
        return ""
    text = f"${float(cost.get('hourly', 0)):.4f}/h ${float(cost.get('monthly', 0)):,.2f}/mo"
    return f"{text} ({cost['source']})" if cost.get("source") else text


def when(value: str) -> str:
    """An API time as local time with how long ago it was."""
    if not value:
        return ""
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    ago = max(0, int(time.time() - t.timestamp()))
    span = (f"{ago} s" if ago < 120 else f"{ago // 60} min" if ago < 7200 else
            f"{ago // 3600} h" if ago < 172800 else f"{ago // 86400} days")
    return f"{t.astimezone().strftime('%Y-%m-%d %H:%M:%S')} ({span} ago)"


# ---- jobs ----------------------------------------------------------------------------------
def job_label(job: dict[str, Any]) -> str:
    params = job.get("params") or {}
    name = params.get("name") or params.get("domain") or ""
    if not name and params.get("names"):
        name = ",".join(str(n) for n in params["names"])
    return f"{job.get('action', 'job')} {name}".strip()


def wait_jobs(c: Client, jobs: list[dict[str, Any]], as_json: bool) -> list[dict[str, Any]]:
    """Follow jobs until each has ended. Their progress lines go to standard error as they
    come; on a terminal (and without --json) a spinner with the elapsed time turns too."""
    spinner = sys.stdout.isatty() and sys.stderr.isatty() and not as_json
    current = {j["id"]: j for j in jobs}
    shown = dict.fromkeys(current, 0)  # progress lines shown per job (dropped ones counted)
    several = len(current) > 1
    frames = itertools.cycle("|/-\\")
    started = time.monotonic()
    fetched: set[str] = set()  # the jobs given may be stale: each is fetched at least once

    def clear() -> None:
        if spinner:
            sys.stderr.write("\r\x1b[K")

    try:
        while True:
            for jid, job in list(current.items()):
                if job.get("status") in TERMINAL and jid in fetched:
                    continue
                job = c.request("GET", f"/api/v2/jobs/{q(jid)}")["data"]
                fetched.add(jid)
                current[jid] = job
                lines = job.get("progress") or []
                dropped = int(job.get("progress_dropped", 0))
                new = lines[max(0, shown[jid] - dropped):]
                if new:
                    clear()
                    for line in new:
                        prefix = f"{job_label(job)}: " if several else ""
                        print(f"{prefix}{line.get('message', '')}", file=sys.stderr, flush=True)
                    shown[jid] = dropped + len(lines)
            pending = [j for j in current.values() if j.get("status") not in TERMINAL]
            if not pending:
                return list(current.values())
            if not spinner:
                time.sleep(WAIT_INTERVAL)
                continue
            for _ in range(5):
                elapsed = int(time.monotonic() - started)
                what = job_label(pending[0]) if len(pending) == 1 else f"{len(pending)} jobs"
                sys.stderr.write(f"\r\x1b[K{next(frames)} {what}: {pending[0].get('status')} "
                                 f"({elapsed} s)")
                sys.stderr.flush()
                time.sleep(WAIT_INTERVAL / 5)
    except KeyboardInterrupt:
        clear()
        warn("stopped waiting; the jobs go on: see 'overcast jobs show ID'")
        raise
    finally:
        clear()


def report_jobs(jobs: list[dict[str, Any]], as_json: bool, single: bool = False) -> int:
    """Print ended (or just started) jobs; 1 when any failed."""
    if as_json:
        output.emit_json(jobs[0] if single and len(jobs) == 1 else jobs)
    failed = 0
    for j in jobs:
        if j.get("status") == "failed":
            failed += 1
            err = j.get("error") or {}
            print(f"overcast: {job_label(j)} failed: {err.get('message') or 'no reason given'} "
                  f"(job {j['id']})", file=sys.stderr)
        elif not as_json:
            done = j.get("status") == "succeeded"
            tail = "" if done else "; follow it with 'overcast jobs show ID' or --wait"
            print(f"{job_label(j)}: {j.get('status')} (job {j['id']}){tail}")
    return FAILED if failed else OK


def run_job(c: Client, method: str, path: str, body: Any, args: argparse.Namespace) -> int:
    """Start a job through the API, wait for it with --wait, print it."""
    job = c.request(method, path, body)["data"]
    if getattr(args, "wait", False):
        job = wait_jobs(c, [job], args.json)[0]
    return report_jobs([job], args.json, single=True)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    params = {"search": args.search, "sort": args.sort or "-created", "limit": args.limit}
    data = client().request("GET", "/api/v2/jobs", params=params)["data"]
    if args.json:
        output.emit_json(data)
        return OK
    rows = [{"id": j["id"], "action": j.get("action"), "target": job_label(j).partition(" ")[2],
             "status": j.get("status"), "created": j.get("created"), "finished": j.get("finished"),
             "error": (j.get("error") or {}).get("message", "")} for j in data]
    output.table(rows, ["id", "action", "target", "status", "created", "finished", "error"],
                 empty="no jobs")
    return OK


def cmd_jobs_show(args: argparse.Namespace) -> int:
    j = client().request("GET", f"/api/v2/jobs/{q(args.id)}")["data"]
    if args.json:
        output.emit_json(j)
        return FAILED if j.get("status") == "failed" else OK
    target = j.get("target") or {}
    output.fields(dict(j, target=f"{target.get('kind', '')} {target.get('id', '')}".strip(),
                       error=(j.get("error") or {}).get("message", "")),
                  ["id", "action", "target", "status", "created_by", "created", "started",
                   "finished", "error"])
    for line in j.get("progress") or []:
        print(f"  {line.get('time', '')}  {line.get('message', '')}")
    if j.get("result") not in (None, {}, []):
        print("result:")
        print(json.dumps(j["result"], indent=2, ensure_ascii=False, default=str))
    return FAILED if j.get("status") == "failed" else OK


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    c = client()
    jobs = [c.request("GET", f"/api/v2/jobs/{q(jid)}")["data"] for jid in args.ids]
    return report_jobs(wait_jobs(c, jobs, args.json), args.json)


# ---- providers -------------------------------------------------------------------------------
def providers(c: Client) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = c.request("GET", "/api/v2/providers")["data"]
    return data


def provider_spec(c: Client, name: str) -> dict[str, Any]:
    specs = providers(c)
    for s in specs:
        if s["provider"] == name:
            return s
    raise CliError(f"unknown provider {name!r}; one of: {', '.join(s['provider'] for s in specs)} "
                   "(see 'overcast providers')", USAGE)


def _field_list(spec: dict[str, Any]) -> str:
    return ", ".join(f["name"] + ("*" if f["required"] else "") + (" (secret)" if f["secret"] else "")
                     for f in spec["fields"])


def cmd_providers(args: argparse.Namespace) -> int:
    c = client()
    if args.provider:
        s = provider_spec(c, args.provider)
        if args.json:
            output.emit_json(s)
            return OK
        print(f"{s['provider']}: {s['title']}")
        print(f"capabilities: {', '.join(s['capabilities'])}")
        print(f"proved by: {s['proved']}")
        rows = [dict(f, required="yes" if f["required"] else "", secret="yes" if f["secret"] else "")
                for f in s["fields"]]
        output.table(rows, ["name", "required", "secret", "type", "default", "help"])
        return OK
    specs = providers(c)
    if args.json:
        output.emit_json(specs)
        return OK
    rows = [{"provider": s["provider"], "title": s["title"], "fields": _field_list(s)} for s in specs]
    output.table(rows, ["provider", "title", "fields"])
    print("\n* required; secret fields are stored encrypted and never shown. "
          "'overcast providers NAME' describes each field.")
    return OK


# ---- credentials ---------------------------------------------------------------------------------
class _Stdin:
    used = ""

    @classmethod
    def read(cls, what: str) -> str:
        if cls.used:
            raise CliError(f"standard input is read once, for {cls.used}: give {what} otherwise", USAGE)
        cls.used = what
        return sys.stdin.read()


def _trim(text: str) -> str:
    """One line loses its line end; several lines (a private key) stay as they are."""
    stripped = text.rstrip("\r\n")
    return text if "\n" in stripped else stripped


def read_text(path: str, what: str) -> str:
    """A file named on the command line; one that cannot be read is a usage error."""
    try:
        return Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise CliError(f"cannot read {what} from {path}: {reason}", USAGE) from None


def secret_value(value: str, what: str) -> str:
    """``-`` reads standard input, ``@path`` reads a file, ``@@x`` is the text ``@x``."""
    if value == "-":
        return _trim(_Stdin.read(what))
    if value.startswith("@@"):
        return value[1:]
    if value.startswith("@"):
        return _trim(read_text(value[1:], what))
    return value


def _files_in(value: Any, where: str) -> Any:
    """``@path`` strings anywhere in a credentials document read from files (private keys of
    each host of "other")."""
    if isinstance(value, str) and value.startswith("@"):
        return secret_value(value, where)
    if isinstance(value, dict):
        return {k: _files_in(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_files_in(v, f"{where}.{i}") for i, v in enumerate(value)]
    return value


def _coerce(field: dict[str, Any] | None, name: str, value: str) -> Any:
    kind = (field or {}).get("type", "string")
    if kind == "integer" and value.strip().isdigit():
        return int(value)
    if kind == "boolean":
        low = value.strip().lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise CliError(f"credential {name} is true or false", USAGE)
    if kind == "list":
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list):
            raise CliError(f"credential {name} is a JSON list: --cred {name}='[...]' or "
                           f"--cred {name}=@FILE.json", USAGE)
        return _files_in(parsed, name)
    return value


def _read_document(source: str) -> dict[str, Any]:
    if source == "-":
        text, where = _Stdin.read("--from-file"), "standard input"
    else:
        text, where = read_text(source, "the cloud"), source
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:  # the position only: the text may hold secrets
        raise CliError(f"{where} is not JSON (line {exc.lineno}, column {exc.colno})", USAGE) from None
    if not isinstance(doc, dict):
        raise CliError(f"{where} must hold a JSON object: credentials, or a whole cloud", USAGE)
    return doc


def add_request(c: Client, args: argparse.Namespace) -> dict[str, Any]:
    """The AddCloudRequest from the arguments: --from-file first, --cred over it."""
    try:
        spec = provider_spec(c, args.provider)
    except CliError as exc:  # a controller that cannot list its providers checks them itself
        if exc.status < 500:
            raise
        spec = {"provider": args.provider, "fields": []}
    fields = {f["name"]: f for f in spec["fields"]}
    body: dict[str, Any] = {}
    creds: dict[str, Any] = {}
    if args.from_file:
        doc = _read_document(args.from_file)
        if "credentials" in doc or "provider" in doc:  # a whole AddCloudRequest
            body = {k: v for k, v in doc.items() if k != "credentials"}
            creds = doc.get("credentials") or {}
            if not isinstance(creds, dict):
                raise CliError("credentials in the file must be a JSON object", USAGE)
            if body.get("provider", args.provider) != args.provider:
                raise CliError(f"the file is for provider {body['provider']!r}, not "
                               f"{args.provider!r}", USAGE)
        else:
            creds = doc
        creds = _files_in(creds, "credentials")
    for item in args.cred or []:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:  # never echo it: it may be a secret given without its name
            raise CliError("--cred expects NAME=VALUE (NAME=@FILE reads a file, NAME=- standard "
                           f"input); {args.provider} fields: {', '.join(fields)}", USAGE)
        if fields and name not in fields:
            raise CliError(f"{args.provider} has no credential {name!r}; its fields: "
                           f"{', '.join(fields)}", USAGE)
        creds[name] = _coerce(fields.get(name), name, secret_value(value, f"credential {name}"))
    missing = [f["name"] for f in spec["fields"]
               if f["required"] and f.get("default") is None and creds.get(f["name"]) in (None, "")]
    if missing:
        raise CliError(f"missing credential{'s' if len(missing) > 1 else ''} for {args.provider}: "
                       f"{', '.join(missing)}; give {'them' if len(missing) > 1 else 'it'} with "
                       f"--cred NAME=VALUE or --from-file (see 'overcast providers {args.provider}')",
                       USAGE)
    body.update(provider=args.provider, credentials=creds)
    if args.name:
        body["name"] = args.name
    if not body.get("name"):
        raise CliError("give the cloud a name with --name", USAGE)
    if args.poll_interval is not None:
        body["poll_interval"] = args.poll_interval
    if args.tag:
        body["tags"] = dict(body.get("tags") or {}, **key_values(args.tag, "--tag"))
    return body


# ---- clouds ------------------------------------------------------------------------------------
def status_words(st: dict[str, Any]) -> str:
    state = st.get("state", "new")
    if state == "new":
        return "not polled yet"
    if state == "ok":
        text = f"ok, polled {when(st.get('last_poll', ''))} in {st.get('duration_ms', '?')} ms"
        warnings = st.get("warnings") or []
        return text + (f"; warnings: {'; '.join(warnings)}" if warnings else "")
    if state == "error":
        n = int(st.get("failures", 1))
        last_ok = st.get("last_success")
        return (f"FAILING: {st.get('last_error') or 'unknown error'} ({n} failed poll"
                f"{'s' if n != 1 else ''} in a row, the last {when(st.get('last_poll', ''))}; "
                f"{'last success ' + when(last_ok) if last_ok else 'never polled successfully'})")
    return state


def _cloud_row(cl: dict[str, Any]) -> dict[str, Any]:
    st, t = cl.get("status") or {}, cl.get("totals") or {}
    cost = t.get("cost") or {}
    return {"id": cl["id"], "name": cl["name"], "provider": cl.get("provider", ""),
            "state": st.get("state", ""), "machines": t.get("machines", ""),
            "running": t.get("running", ""), "monthly": f"${float(cost.get('monthly', 0)):,.2f}",
            "last_poll": st.get("last_poll", ""), "error": st.get("last_error", "")}


def cmd_clouds_list(args: argparse.Namespace) -> int:
    data = client().request("GET", "/api/v2/clouds", params={"limit": 1000, "search": args.search})["data"]
    if args.json:
        output.emit_json(data)
    else:
        output.table([_cloud_row(cl) for cl in data],
                     ["id", "name", "provider", "state", "machines", "running", "monthly",
                      "last_poll", "error"], empty="no clouds; add one with 'overcast clouds add'")
    return OK


def cmd_clouds_show(args: argparse.Namespace) -> int:
    cl = client().request("GET", f"/api/v2/clouds/{q(args.cloud)}")["data"]
    if args.json:
        output.emit_json(cl)
        return OK
    t = cl.get("totals") or {}
    shown = dict(cl, status=status_words(cl.get("status") or {}),
                 machines=f"{t.get('machines', 0)} ({t.get('running', 0)} running)",
                 cost=money(t.get("cost")), provider=f"{cl.get('provider')} ({cl.get('title', '')})",
                 poll_interval=f"{cl.get('poll_interval')} s" if cl.get("poll_interval") else None,
                 config=json.dumps(cl["config"], ensure_ascii=False) if cl.get("config") else None)
    output.fields(shown, ["id", "name", "provider", "status", "machines", "cost", "enabled",
                          "poll_interval", "config", "credentials_set", "capabilities", "features",
                          "tags", "created", "created_by"])
    return OK


def cmd_clouds_add(args: argparse.Namespace) -> int:
    c = client()
    cl = c.request("POST", "/api/v2/clouds", add_request(c, args))["data"]
    if args.json:
        output.emit_json(cl)
    else:
        print(f"added cloud {cl['name']} ({cl['id']}): {cl.get('title', cl.get('provider'))}, "
              f"credentials checked; polled every {cl.get('poll_interval')} s")
    return OK


def cmd_clouds_remove(args: argparse.Namespace) -> int:
    c = client()
    cl = c.request("GET", f"/api/v2/clouds/{q(args.cloud)}")["data"]
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"removing cloud {cl['name']} needs --yes (standard input is not a "
                           "terminal to ask)", USAGE)
        answer = input(f"Remove cloud {cl['name']} ({cl['id']}) and forget its inventory? "
                       "Nothing changes at the provider. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            warn("not removed")
            return FAILED
    forgotten = c.request("DELETE", f"/api/v2/clouds/{q(cl['id'])}")["data"]["forgotten"]
    if args.json:
        output.emit_json({"id": cl["id"], "name": cl["name"], "forgotten": forgotten})
    else:
        what = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(forgotten.items()))
        print(f"removed cloud {cl['name']} ({cl['id']}); forgot {what or 'nothing'} "
              "(nothing was changed at the provider)")
    return OK


def cmd_clouds_poll(args: argparse.Namespace) -> int:
    c = client()
    st = c.request("POST", f"/api/v2/clouds/{q(args.cloud)}/actions/poll")["data"]
    if args.json:
        output.emit_json(st)
    elif st.get("note"):
        print(st["note"])
    elif st.get("state") == "ok":
        counts = st.get("counts") or {}
        found = ", ".join(f"{v.get('total', 0)} {k}s" for k, v in counts.items() if v.get("total"))
        print(f"polled {args.cloud}: ok in {st.get('duration_ms', '?')} ms"
              f"{': ' + found if found else ''}")
        for w in st.get("warnings") or []:
            warn(f"warning: {w}")
    if st.get("state") == "error":
        raise CliError(f"polling {args.cloud} failed: {st.get('last_error') or 'unknown error'}")
    return OK


# ---- parser ------------------------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add clouds, providers and jobs to the CLI's parser."""
    p = sub.add_parser("clouds", help="clouds: add, list, show, remove, poll",
                       description="Without a subcommand: list the clouds.")
    p.add_argument("--search", help="filter, e.g. provider:amazon")
    json_opt(p)
    p.set_defaults(func=cmd_clouds_list)
    csub = p.add_subparsers(dest="clouds_command", metavar="SUBCOMMAND")
    c = csub.add_parser("list", help="list clouds with their poll state, machines and cost")
    c.add_argument("--search", help="filter, e.g. provider:amazon")
    json_opt(c)
    c.set_defaults(func=cmd_clouds_list)
    c = csub.add_parser(
        "add", help="add a cloud (its credentials are checked at the provider first)",
        description="Credentials: --cred NAME=VALUE (repeat it); VALUE @FILE reads a file (a "
                    "private key), VALUE - reads standard input (--cred apisecret=-); list "
                    "fields take JSON. --from-file takes a JSON object of credentials, or a "
                    "whole cloud {name, provider, credentials, ...}; '@FILE' strings in it are "
                    "read from files ('@@' is a literal '@'). Secrets are never printed.",
        epilog="e.g. overcast clouds add amazon --name aws --cred apikey=AKIA... "
               "--cred apisecret=- --cred region=eu-west-1 < secret.txt; overcast clouds add "
               "other --name rack --from-file hosts.json, with hosts.json "
               '{"hosts": [{"host": "10.0.0.5", "alias": "db1", "key": "@~/.ssh/id_ed25519"}]}')
    c.add_argument("provider", help="one of 'overcast providers'")
    c.add_argument("--name", help="the cloud's name in Overcast")
    c.add_argument("--cred", action="append", metavar="NAME=VALUE", help="a credential (repeat)")
    c.add_argument("--from-file", metavar="FILE", help="JSON credentials or cloud; - for standard input")
    c.add_argument("--poll-interval", type=int, metavar="SECONDS", help="how often to poll it")
    c.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag on the cloud (repeat)")
    json_opt(c)
    c.set_defaults(func=cmd_clouds_add)
    c = csub.add_parser("show", help="show a cloud: poll status, machines, cost")
    c.add_argument("cloud", metavar="ID|NAME")
    json_opt(c)
    c.set_defaults(func=cmd_clouds_show)
    c = csub.add_parser("remove", help="remove a cloud from Overcast (nothing changes at the provider)")
    c.add_argument("cloud", metavar="ID|NAME")
    c.add_argument("--yes", "-y", action="store_true", help="do not ask")
    json_opt(c)
    c.set_defaults(func=cmd_clouds_remove)
    c = csub.add_parser("poll", help="poll a cloud now; exit 1 if the poll fails")
    c.add_argument("cloud", metavar="ID|NAME")
    json_opt(c)
    c.set_defaults(func=cmd_clouds_poll)

    p = sub.add_parser("providers", help="cloud providers and their credential fields")
    p.add_argument("provider", nargs="?", help="describe this provider's fields")
    json_opt(p)
    p.set_defaults(func=cmd_providers)

    p = sub.add_parser("jobs", help="background jobs (cloud actions, runs): list, show, wait, "
                                   "cancel, output",
                       description="Without a subcommand: list the newest jobs.")
    _jobs_list_opts(p)
    jsub = p.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND")
    _jobs_list_opts(jsub.add_parser("list", help="list jobs, newest first"))
    c = jsub.add_parser("show", help="show a job: status, progress, result or error; exit 1 if failed")
    c.add_argument("id")
    json_opt(c)
    c.set_defaults(func=cmd_jobs_show)
    c = jsub.add_parser("wait", help="wait for jobs, showing their progress; exit 1 if any failed")
    c.add_argument("ids", nargs="+", metavar="ID")
    json_opt(c)
    c.set_defaults(func=cmd_jobs_wait)
    from controller.cli import runs  # it builds on this module

    runs.add_job_commands(jsub)


def _jobs_list_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--search", help="filter, e.g. status:failed")
    p.add_argument("--sort", help="default -created")
    p.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    json_opt(p)
    p.set_defaults(func=cmd_jobs_list)
