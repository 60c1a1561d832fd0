"""The ``overcast`` client commands, run as a user runs them, against a real controller: login
and the saved config, whoami, machines, logs (and --follow), tokens, and the exit codes."""

from __future__ import annotations

import json
import queue
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.store import open_store
from controller.store.docs import dump
from tests.support.controller import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    OVERCAST,
    ROOT,
    Controller,
    free_port,
)

MACHINES = [
    {"id": "m-1", "name": "web-1", "state": "running", "tags": {"env": "prod"},
     "public_ips": ["198.51.100.1"], "cloud": "aws-1", "created": "2026-02-01T00:00:00Z"},
    {"id": "m-2", "name": "web-2", "state": "stopped", "tags": {"env": "prod"},
     "public_ips": [], "cloud": "aws-1", "created": "2026-02-02T00:00:00Z"},
    {"id": "m-3", "name": "db-1", "state": "running", "tags": {"env": "dev"},
     "public_ips": ["198.51.100.3"], "cloud": "gce-1", "created": "2026-02-03T00:00:00Z"},
]

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("cli"))
    org = c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")["org"]["id"]
    other = c.adduser("eve@other.example.com", "other password 1", "--org", "Other")["org"]["id"]
    store = open_store(Path(c.data_dir) / "store")
    try:
        for m in MACHINES:
            store.put(machine_key(org, m["id"]), dump(MACHINE, m))
        store.put(machine_key(other, "m-other"), dump(MACHINE, {"id": "m-other", "name": "theirs"}))
    finally:
        store.close()
    c.start()
    yield c
    c.stop()


@pytest.fixture
def xdg(tmp_path: Path) -> Path:
    return tmp_path / "xdg"


@pytest.fixture
def run(ctl: Controller, xdg: Path) -> Run:
    """``overcast ARGS`` with this test's own config directory (no saved login at first)."""
    def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return ctl.cli(*args, input=input, env={"XDG_CONFIG_HOME": str(xdg), **(env or {})})
    return run


@pytest.fixture
def logged_in(run: Run, ctl: Controller) -> Run:
    r = run("login", ctl.url, "--email", ADMIN_EMAIL, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    return run


def saved_login(xdg: Path) -> dict[str, Any]:
    return json.loads((xdg / "overcast" / "cli.json").read_text())  # type: ignore[no-any-return]


# ---- login --------------------------------------------------------------------------------

def test_login_with_password_saves_a_private_token(run: Run, ctl: Controller, xdg: Path) -> None:
    r = run("login", ctl.url + "/", "--email", ADMIN_EMAIL, "--password-stdin",
            "--token-name", "my laptop", input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert f"logged in to {ctl.url} as {ADMIN_EMAIL} in Acme" in r.stdout
    path = xdg / "overcast" / "cli.json"
    assert str(path) in r.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = saved_login(xdg)
    assert saved["url"] == ctl.url and saved["email"] == ADMIN_EMAIL
    assert saved["token"].startswith("oc_") and saved["token_id"]
    assert ADMIN_PASSWORD not in path.read_text()
    # the saved token is a real API token with the name given, and it works
    who = ctl.http(saved["token"]).get("/api/v2/auth")
    assert who.status == 200 and who.body["data"]["auth"] == "token"
    tokens = ctl.http(saved["token"]).get("/api/v2/auth/tokens").body["data"]
    assert any(t["id"] == saved["token_id"] and t["name"] == "my laptop" for t in tokens)
    # the session the login used is ended once the token exists
    recent = ctl.http(saved["token"]).get("/api/v2/logs?limit=3").body["data"]
    assert [e["action"] for e in recent] == ["session.delete", "token.create", "session.create"]
    r = run("whoami")
    assert r.returncode == 0 and ADMIN_EMAIL in r.stdout


def test_login_twice_in_a_row(run: Run, ctl: Controller, xdg: Path) -> None:
    """The default token name must not collide for two logins within a second."""
    ids = []
    for _ in range(2):
        r = run("login", ctl.url, "--email", ADMIN_EMAIL, "--password-stdin",
                input=ADMIN_PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        ids.append(saved_login(xdg)["token_id"])
    assert ids[0] != ids[1]


def test_login_wrong_password_is_exit_3(run: Run, ctl: Controller, xdg: Path) -> None:
    r = run("login", ctl.url, "--email", ADMIN_EMAIL, "--password-stdin", input="wrong password\n")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "wrong e-mail or password" in r.stderr
    assert not (xdg / "overcast" / "cli.json").exists()


def test_login_unreachable_is_exit_5(run: Run, xdg: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = run("login", url, "--email", ADMIN_EMAIL, "--password-stdin", input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert "cannot reach the controller" in r.stderr and url in r.stderr
    assert not (xdg / "overcast" / "cli.json").exists()


def test_login_bad_url_is_usage_error(run: Run) -> None:
    r = run("login", "ftp://example.com/x", "--token", "oc_x")
    assert r.returncode == 2
    assert "URL must be" in r.stderr


def test_login_with_token(run: Run, ctl: Controller, xdg: Path) -> None:
    token = ctl.token(name="for cli login --token")
    r = run("login", ctl.url, "--token", token)
    assert r.returncode == 0, r.stderr
    assert ADMIN_EMAIL in r.stdout
    assert saved_login(xdg)["token"] == token
    r = run("whoami", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["auth"] == "token"


def test_login_with_invalid_token_is_exit_3(run: Run, ctl: Controller, xdg: Path) -> None:
    r = run("login", ctl.url, "--token", "oc_invalid")
    assert r.returncode == 3
    assert "not valid" in r.stderr
    assert not (xdg / "overcast" / "cli.json").exists()


def test_not_logged_in_is_exit_3(run: Run) -> None:
    r = run("whoami")
    assert r.returncode == 3
    assert "not logged in" in r.stderr and "overcast login" in r.stderr


def test_logout_revokes_the_token(logged_in: Run, ctl: Controller, xdg: Path) -> None:
    token = saved_login(xdg)["token"]
    r = logged_in("logout")
    assert r.returncode == 0, r.stderr
    assert not (xdg / "overcast" / "cli.json").exists()
    assert ctl.http(token).get("/api/v2/auth").status == 401


# ---- whoami, machines ---------------------------------------------------------------------

def test_whoami(logged_in: Run, ctl: Controller) -> None:
    r = logged_in("whoami")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{ADMIN_EMAIL} (platform admin)"
    assert lines[1] == "organisation: Acme (owner)"
    assert "signed in with: token" in lines[2] and ctl.url in lines[2]
    r = logged_in("whoami", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["user"]["email"] == ADMIN_EMAIL
    assert info["org"]["name"] == "Acme" and info["role"] == "owner"
    assert "_pw" not in r.stdout


def test_machines_table_and_json(logged_in: Run) -> None:
    r = logged_in("machines")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATE", "CLOUD", "PUBLIC_IPS", "TAGS"]
    assert [ln.split()[0] for ln in lines[1:]] == ["m-1", "m-2", "m-3"]
    assert "web-1" in lines[1] and "running" in lines[1] and "env=prod" in lines[1]
    assert "theirs" not in r.stdout

    r = logged_in("machines", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [m["id"] for m in data] == ["m-1", "m-2", "m-3"]
    assert data[0]["tags"] == {"env": "prod"} and data[0]["public_ips"] == ["198.51.100.1"]


def test_machines_search_sort_limit(logged_in: Run) -> None:
    # a descending sort as the help shows it, with a space, and with "="
    for sort in (["--sort", "-name"], ["--sort=-name"]):
        r = logged_in("machines", "--json", "--search", "state:running", *sort)
        assert r.returncode == 0, r.stderr
        assert [m["name"] for m in json.loads(r.stdout)] == ["web-1", "db-1"]
    r = logged_in("machines", "--limit", "1", "--sort", "name")
    assert r.returncode == 0, r.stderr
    assert [ln.split()[0] for ln in r.stdout.splitlines()[1:]] == ["m-3"]
    assert "showing 1 of 3" in r.stderr
    r = logged_in("machines", "--search", "name:nothing-like-this")
    assert r.returncode == 0 and r.stdout == "" and "no machines" in r.stderr
    r = logged_in("machines", "--search", "(unclosed")
    assert r.returncode == 1
    assert "search" in r.stderr


def test_machine_by_id(logged_in: Run) -> None:
    r = logged_in("machines", "m-2")
    assert r.returncode == 0, r.stderr
    fields = dict(ln.split(None, 1) for ln in r.stdout.splitlines() if len(ln.split(None, 1)) == 2)
    assert fields["id"] == "m-2" and fields["name"] == "web-2" and fields["state"] == "stopped"
    r = logged_in("machines", "m-2", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["name"] == "web-2"


def test_machine_not_found_is_exit_4(logged_in: Run) -> None:
    for mid in ("no-such-machine", "m-other"):  # m-other is another organisation's
        r = logged_in("machines", mid)
        assert r.returncode == 4, (mid, r.stdout, r.stderr)
        assert "no such machine" in r.stderr
        assert r.stdout == ""


# ---- logs ---------------------------------------------------------------------------------

def test_logs_table_and_json(logged_in: Run) -> None:
    r = logged_in("logs")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "WHO", "ACTION", "OUTCOME", "TARGET", "FROM"]
    assert any("token.create" in ln and ADMIN_EMAIL in ln for ln in lines)

    r = logged_in("logs", "--json", "--limit", "5")
    assert r.returncode == 0, r.stderr
    entries = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert 1 <= len(entries) <= 5
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs)  # oldest first, like a log
    assert {"seq", "time", "actor", "action", "outcome", "target", "hash"} <= set(entries[0])
    last = entries[-1]
    assert last["action"] == "session.delete"  # the login's session, ended after the token

    r = logged_in("logs", "--json", "--action", "token.create")
    assert r.returncode == 0
    assert {json.loads(ln)["action"] for ln in r.stdout.splitlines()} == {"token.create"}
    r = logged_in("logs", "--since", "yesterday")
    assert r.returncode == 1 and "since" in r.stderr


class Lines:
    """Lines of a running process's stdout, read by a thread (never blocks the test)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(line)
        self.q.put(None)

    def until(self, pred: Callable[[str], bool], timeout: float = 10) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching line in {timeout}s; got {got}") from None
            if line is None:
                raise AssertionError(f"the process ended; got {got}")
            got.append(line)
            if pred(line):
                return got


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_logs_follow_prints_new_entries(logged_in: Run, ctl: Controller, xdg: Path,
                                        as_json: bool) -> None:
    env = ctl.env()
    env["XDG_CONFIG_HOME"] = str(xdg)
    args = ["logs", "--follow", "--interval", "0.2", "--limit", "3", *(["--json"] if as_json else [])]
    proc = subprocess.Popen([*OVERCAST, *args], env=env, cwd=str(ROOT), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = Lines(proc)
        # the existing entries first (the last of which is the login's session.delete)
        lines.until(lambda ln: "session.delete" in ln)
        name = f"followed {time.time()}"
        r = ctl.session().post("/api/v2/auth/tokens", {"name": name})
        assert r.status == 201
        tid = r.body["id"]
        new = lines.until(lambda ln: tid in ln)
        # first the session.create of ctl.session(), then the token
        assert any("session.create" in ln for ln in new)
        if as_json:
            e = json.loads(new[-1])
            assert e["action"] == "token.create" and e["target"]["id"] == tid
            assert e["details"]["token_name"] == name
        else:
            assert "token.create" in new[-1] and f"token:{tid}" in new[-1]
            assert ADMIN_EMAIL in new[-1]
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
        assert proc.stdout is not None
        proc.stdout.close()


def test_logs_follow_since_the_future_prints_no_old_history(logged_in: Run, ctl: Controller,
                                                            xdg: Path) -> None:
    """Nothing matches a --since in the future at first; following must start at the current
    head, not replay the whole log (the since filter cannot apply to new entries)."""
    h = ctl.session()
    head = h.get("/api/v2/logs?limit=1").body["data"][0]["seq"]
    env = ctl.env()
    env["XDG_CONFIG_HOME"] = str(xdg)
    args = ["logs", "--follow", "--interval", "0.2", "--json", "--since", "2999-01-01T00:00:00Z",
            "--action", "token"]
    proc = subprocess.Popen([*OVERCAST, *args], env=env, cwd=str(ROOT), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = Lines(proc)
        time.sleep(1)  # a few polls: none may print history
        r = h.post("/api/v2/auth/tokens", {"name": f"after the head {time.time()}"})
        assert r.status == 201
        tid = r.body["id"]
        got = [json.loads(ln) for ln in lines.until(lambda ln: tid in ln)]
        # only what came after the head, and only what the other filters allow
        assert all(e["seq"] > head for e in got), [e["seq"] for e in got]
        assert {e["action"] for e in got} == {"token.create"}
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
        assert proc.stdout is not None
        proc.stdout.close()


# ---- tokens -------------------------------------------------------------------------------

def test_token_create_list_revoke(logged_in: Run, ctl: Controller) -> None:
    r = logged_in("token", "create", "ci pipeline", "--ttl", "2h", "--json")
    assert r.returncode == 0, r.stderr
    tok = json.loads(r.stdout)
    assert tok["name"] == "ci pipeline" and tok["ttl"] == 7200
    assert tok["id"] and tok["token"].startswith("oc_")
    assert ctl.http(tok["token"]).get("/api/v2/auth").status == 200

    r = logged_in("token", "create", "plain")
    assert r.returncode == 0, r.stderr
    plain = r.stdout.strip()
    assert plain.startswith("oc_") and "\n" not in plain
    assert "shown only this once" in r.stderr

    r = logged_in("token", "create", "ci pipeline")
    assert r.returncode == 1 and "you have a token with that name" in r.stderr

    r = logged_in("token", "list")
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert tok["id"] in rows and "ci pipeline" in rows[tok["id"]]
    assert tok["token"] not in r.stdout and plain not in r.stdout

    r = logged_in("token", "revoke", tok["id"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"revoked {tok['id']} (ci pipeline)"
    assert ctl.http(tok["token"]).get("/api/v2/auth").status == 401
    r = logged_in("token", "list", "--json")
    listed = {t["id"]: t for t in json.loads(r.stdout)}
    assert listed[tok["id"]]["revoked"] is True

    r = logged_in("token", "revoke", "nosuchtoken")
    assert r.returncode == 4 and "no such token" in r.stderr


def test_revoked_or_invalid_token_is_exit_3(run: Run, ctl: Controller) -> None:
    h = ctl.session()
    r = h.post("/api/v2/auth/tokens", {"name": f"revoked for cli {time.time()}"})
    secret, tid = r.body["token"], r.body["id"]
    assert run("login", ctl.url, "--token", secret).returncode == 0
    assert run("whoami").returncode == 0
    assert h.delete(f"/api/v2/auth/tokens/{tid}").status == 200
    for args in (("whoami",), ("machines",), ("logs",), ("token", "list")):
        r = run(*args)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("overcast: ") and "revoked" in r.stderr
        assert r.stdout == ""
    r = run("whoami", env={"OVERCAST_TOKEN": "oc_garbage"})
    assert r.returncode == 3 and "not valid" in r.stderr


def test_env_url_and_token(run: Run, ctl: Controller, xdg: Path) -> None:
    token = ctl.token(name="env token")
    r = run("whoami", "--json", env={"OVERCAST_URL": ctl.url, "OVERCAST_TOKEN": token})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["user"]["email"] == ADMIN_EMAIL
    assert not (xdg / "overcast" / "cli.json").exists()  # nothing saved
    r = run("machines", "--json", env={"OVERCAST_URL": ctl.url, "OVERCAST_TOKEN": token})
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 3
    # the environment overrides a saved login
    dead = f"http://127.0.0.1:{free_port()}"
    r = run("whoami", env={"OVERCAST_URL": dead, "OVERCAST_TOKEN": token})
    assert r.returncode == 5 and dead in r.stderr


def test_unreachable_saved_url_is_exit_5(logged_in: Run, xdg: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    r = logged_in("whoami", env={"OVERCAST_URL": dead})
    assert r.returncode == 5
    assert "cannot reach the controller" in r.stderr


# ---- help ---------------------------------------------------------------------------------

COMMANDS = [(), ("controller",), ("adduser",), ("audit",), ("audit", "verify"), ("login",),
            ("logout",), ("whoami",), ("machines",), ("logs",), ("token",), ("token", "create"),
            ("token", "list"), ("token", "revoke")]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "overcast")
def test_help(run: Run, cmd: tuple[str, ...]) -> None:
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: overcast")
    assert r.stderr == ""


def test_no_command_is_usage(run: Run) -> None:
    r = run()
    assert r.returncode == 2
    assert "usage: overcast" in r.stdout
    r = run("token")
    assert r.returncode == 2


# ---- ids in paths -------------------------------------------------------------------------

def test_ids_are_quoted_in_paths(logged_in: Run, ctl: Controller) -> None:
    # "m-1?x=1" is not m-1 with a query string, and "../auth" does not leave /machines/
    for mid in ("m-1?x=1", "../auth", "m-1/", "m-1#frag"):
        r = logged_in("machines", mid)
        assert r.returncode == 4, (mid, r.stdout, r.stderr)
        assert "no such machine" in r.stderr
    # revoking "ID?x" must not revoke ID
    token = ctl.token(name=f"quoted {time.time()}")
    tid = next(t["id"] for t in ctl.http(token).get("/api/v2/auth/tokens").body["data"]
               if t["name"].startswith("quoted "))
    r = logged_in("token", "revoke", f"{tid}?x=1")
    assert r.returncode == 4 and "no such token" in r.stderr, (r.stdout, r.stderr)
    assert ctl.http(token).get("/api/v2/auth").status == 200


# ---- never a traceback --------------------------------------------------------------------

class _NotOvercast(BaseHTTPRequestHandler):
    """Another web server on the port: 200 and an HTML page for everything."""

    def _page(self) -> None:
        body = b"<html><body>It works!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _page

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def not_overcast() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotOvercast)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _one_line_error(r: subprocess.CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("overcast: "), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_an_answer_that_is_not_json_is_exit_5(run: Run, not_overcast: str, xdg: Path) -> None:
    for args in (("whoami",), ("machines",), ("logs",), ("token", "list")):
        err = _one_line_error(run(*args, env={"OVERCAST_URL": not_overcast, "OVERCAST_TOKEN": "oc_x"}), 5)
        assert "did not answer like an Overcast controller" in err and not_overcast in err
    err = _one_line_error(run("login", not_overcast, "--token", "oc_x"), 5)
    assert "did not answer like an Overcast controller" in err
    assert not (xdg / "overcast" / "cli.json").exists()


def test_a_ca_that_is_not_pem_is_exit_5(run: Run, not_overcast: str, xdg: Path) -> None:
    r = run("login", not_overcast, "--token", "oc_x", "--ca-fingerprint", "sha256:" + "00" * 32)
    err = _one_line_error(r, 5)
    assert f"{not_overcast}/ca.pem did not answer with a PEM certificate" in err
    assert not (xdg / "overcast" / "cli.json").exists()


def test_local_os_and_value_errors_are_one_line(run: Run, ctl: Controller, tmp_path: Path) -> None:
    # the config directory cannot be made (a file is in the way): OSError
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    token = ctl.token(name=f"os error {time.time()}")
    err = _one_line_error(run("login", ctl.url, "--token", token,
                              env={"XDG_CONFIG_HOME": str(blocker)}), 1)
    assert "Not a directory" in err and str(blocker) in err
    # a URL urllib cannot parse (ValueError), one with a port that is not a number
    err = _one_line_error(run("whoami", env={"OVERCAST_URL": "http://[::1", "OVERCAST_TOKEN": token}), 1)
    assert "Invalid IPv6 URL" in err
    err = _one_line_error(run("whoami", env={"OVERCAST_URL": "http://127.0.0.1:port",
                                             "OVERCAST_TOKEN": token}), 1)
    assert "not valid" in err and "port" in err
    # a saved login whose CA file has gone
    cfg = tmp_path / "cfg" / "overcast"
    cfg.mkdir(parents=True)
    (cfg / "cli.json").write_text(json.dumps({"url": "https://127.0.0.1:1", "token": token,
                                              "ca_file": str(tmp_path / "gone.pem")}))
    err = _one_line_error(run("whoami", env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")}), 1)
    assert f"cannot use the CA file {tmp_path / 'gone.pem'}" in err
