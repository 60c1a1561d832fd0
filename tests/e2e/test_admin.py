"""The admin commands ``overcast adduser`` and ``overcast audit verify``, with the controller
running (through its admin socket) and stopped (on the store itself), and the audit chain
catching a tampered or truncated log."""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import admin
from controller.audit.chain import HEAD_KEY, entry_key, org_index_key
from controller.errors import OvercastError
from controller.settings import Settings
from controller.store import open_store
from tests.support.controller import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    OVERCAST,
    ROOT,
    Controller,
    Http,
    free_port,
)

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making files owned by another user needs root")


def start_again(c: Controller) -> None:
    """Start a stopped controller. ``Controller.start`` waits for the ready line in its log,
    which a previous run already wrote: move the old log aside so it waits for this run."""
    n = len(list(c.tmp.glob("controller.log.*")))
    c.log_path.rename(c.log_path.with_name(f"controller.log.{n}"))
    c.start()


def adduser(c: Controller, email: str, password: str, *extra: str) -> Any:
    return c.cli("adduser", email, "--password-stdin", *extra, input=password + "\n")


def verify(c: Controller) -> tuple[int, str, dict[str, Any]]:
    """``audit verify`` in text and in JSON: (exit code, text, JSON answer)."""
    text = c.cli("audit", "verify")
    js = c.cli("audit", "verify", "--json")
    assert text.returncode == js.returncode, (text.stderr, js.stderr)
    assert "Traceback" not in text.stderr + js.stderr
    return text.returncode, text.stdout + text.stderr, json.loads(js.stdout)


def can_log_in(c: Controller, email: str, password: str) -> bool:
    r = c.http().post("/api/v2/auth/sessions", {"email": email, "password": password})
    return r.status == 200 and r.body["data"]["user"]["email"] == email


def last_seq(c: Controller) -> int:
    """The sequence number of the newest audit entry (after the sign-in this takes)."""
    r = c.session().get("/api/v2/logs?allorgs=true&limit=1")
    assert r.status == 200, r.body
    return int(r.body["data"][0]["seq"])


# ---- adduser ------------------------------------------------------------------------------

def test_adduser_while_running_goes_through_the_admin_socket(controller: Controller) -> None:
    sock = controller.data_dir / "admin.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # only the controller's operator
    assert stat.S_IMODE(controller.data_dir.stat().st_mode) == 0o700
    r = adduser(controller, "dave@example.com", "dave password 1", "--json")
    assert r.returncode == 0, r.stderr
    assert "lock" not in r.stderr.lower()
    out = json.loads(r.stdout)
    assert out["user"]["email"] == "dave@example.com" and not out["user"]["is_admin"]
    assert out["org"]["name"] == "dave"  # a personal organisation by default
    assert "_pw" not in r.stdout and "dave password" not in r.stdout
    assert can_log_in(controller, "dave@example.com", "dave password 1")
    # it is the running controller that wrote it: audited, as an admin action
    h = controller.session("dave@example.com", "dave password 1")
    logs = h.get("/api/v2/logs?action=user.create").body["data"]
    assert len(logs) == 1
    assert logs[0]["actor"] == {"kind": "admin", "via": "admin"}
    assert logs[0]["details"]["email"] == "dave@example.com"


def test_adduser_into_an_existing_org_and_text_output(controller: Controller) -> None:
    r = adduser(controller, "Erin@Example.com", "erin password 1", "--org", "Acme")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("created user erin@example.com (")
    assert r.stdout.rstrip().endswith("in organisation Acme")
    h = controller.session("erin@example.com", "erin password 1")
    info = h.get("/api/v2/auth").body["data"]
    assert info["org"]["name"] == "Acme" and info["role"] == "member"


def test_adduser_duplicate_email_is_refused(controller: Controller) -> None:
    for email in (ADMIN_EMAIL, ADMIN_EMAIL.upper()):
        r = adduser(controller, email, "another password")
        assert r.returncode != 0
        assert r.stderr.startswith("overcast: a user with that e-mail exists")
        assert r.stdout == ""
    assert not can_log_in(controller, ADMIN_EMAIL, "another password")


@pytest.mark.parametrize("email", ["not-an-email", "two@@example.com", "spaces in@example.com"])
def test_adduser_bad_email_is_refused(controller: Controller, email: str) -> None:
    r = adduser(controller, email, "a fine password")
    assert r.returncode != 0
    assert r.stderr.strip() == "overcast: not a valid e-mail address (field: email)"


def test_adduser_short_or_missing_password(controller: Controller) -> None:
    r = adduser(controller, "frank@example.com", "short")
    assert r.returncode != 0 and "password must have at least 8 characters" in r.stderr
    r = controller.cli("adduser", "frank@example.com", "--password-stdin", input="")
    assert r.returncode == 2 and "no password on standard input" in r.stderr
    r = controller.cli("adduser", "frank@example.com", input="x\n")
    assert r.returncode == 2 and "--password-stdin" in r.stderr


def test_adduser_while_stopped_opens_the_store(fresh_controller: Controller) -> None:
    c = fresh_controller
    assert c.stop() == 0
    assert not (c.data_dir / "admin.sock").exists()
    r = adduser(c, "gina@example.com", "gina password 1", "--org", "Acme", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["org"]["name"] == "Acme"
    r = adduser(c, "gina@example.com", "gina password 2")
    assert r.returncode != 0
    assert r.stderr.startswith("overcast: a user with that e-mail exists")
    r = adduser(c, "bad-address", "gina password 2")
    assert r.returncode != 0 and "not a valid e-mail address" in r.stderr
    start_again(c)
    assert can_log_in(c, "gina@example.com", "gina password 1")
    assert not can_log_in(c, "gina@example.com", "gina password 2")
    code, text, js = verify(c)
    assert code == 0, text


# ---- the admin socket: whose it is --------------------------------------------------------

def deep_controller(tmp_path: Path) -> Controller:
    """A controller whose <data_dir>/admin.sock is too long for a Unix socket."""
    c = Controller(tmp_path / ("d" * 90))
    assert len(str(c.data_dir / "admin.sock").encode()) >= 100
    return c


def fallback_dir(c: Controller) -> Path:
    """The private directory of the admin socket (never /tmp itself: the tests chmod, chown
    and remove it)."""
    d = Path(Settings(data_dir=str(c.data_dir)).admin_socket).parent
    assert d.parent == Path("/tmp") and d.name.startswith("overcast-"), d
    return d


@pytest.fixture
def cleanup() -> Iterator[list[Path]]:
    """Directories a test makes outside its tmp_path (/tmp/overcast-*): removed afterwards."""
    paths: list[Path] = []
    yield paths
    for p in paths:
        if p.parent == Path("/tmp") and p.name.startswith("overcast-"):
            shutil.rmtree(p, ignore_errors=True)


class Planted:
    """A listener somebody else put where the admin socket goes: it keeps what it receives."""

    def __init__(self, path: Path, owner: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.sock.settimeout(0.2)
        if owner is not None:
            os.chown(path, owner, owner)
        self.received = b""
        self.connected = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connected = True
            conn.settimeout(2)
            try:
                self.received += conn.recv(65536)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_deep_data_dir_gets_a_private_socket_directory(tmp_path: Path, cleanup: list[Path]) -> None:
    c = deep_controller(tmp_path)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    d = fallback_dir(c)
    cleanup.append(d)
    digest = d.name.rsplit("-", 1)[1]
    assert d == Path(f"/tmp/overcast-{c.data_dir.stat().st_uid}-{digest}") and len(digest) == 16
    assert not d.exists()
    c.start()
    try:
        st = d.lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()
        sock = d / "admin.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        r = adduser(c, "kim@example.com", "kim password 1", "--json")
        assert r.returncode == 0, r.stderr
        assert "lock" not in r.stderr.lower()  # through the socket, not the store
        assert can_log_in(c, "kim@example.com", "kim password 1")
    finally:
        assert c.stop() == 0
    assert not d.exists()  # a clean stop removes the socket and its directory


def _start_refused(c: Controller) -> str:
    try:
        r = subprocess.run([*OVERCAST, "controller"], env=c.env(), cwd=str(ROOT),
                           capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the controller started: {exc.stdout!r}") from None
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "overcast controller ready" not in out and "Traceback" not in out, out
    return out


def test_controller_refuses_a_socket_directory_open_to_others(tmp_path: Path,
                                                              cleanup: list[Path]) -> None:
    c = deep_controller(tmp_path)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin")
    d = fallback_dir(c)
    cleanup.append(d)
    d.mkdir()
    os.chmod(d, 0o755)
    out = _start_refused(c)
    assert "overcast: cannot start: refusing to put the admin socket in" in out and str(d) in out
    assert "accessible by group or others" in out
    assert d.exists() and not (d / "admin.sock").exists()  # not ours to remove


@as_root
def test_controller_refuses_a_socket_directory_owned_by_another_user(tmp_path: Path,
                                                                     cleanup: list[Path]) -> None:
    c = deep_controller(tmp_path)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin")
    d = fallback_dir(c)
    cleanup.append(d)
    d.mkdir(mode=0o700)
    os.chown(d, NOBODY, NOBODY)
    out = _start_refused(c)
    assert f"refusing to put the admin socket in {d}" in out and f"owned by uid {NOBODY}" in out


def _refused_adduser(c: Controller, planted: Planted) -> str:
    try:
        r = adduser(c, "mallory-victim@example.com", "the secret password")
    finally:
        planted.close()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("overcast: refusing to use the admin socket"), r.stderr
    assert "Traceback" not in r.stderr
    assert not planted.connected and b"secret password" not in planted.received
    return r.stderr


@as_root
def test_adduser_refuses_a_planted_listener_in_the_fallback_place(tmp_path: Path,
                                                                  cleanup: list[Path]) -> None:
    c = deep_controller(tmp_path)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin")  # the data directory exists, no controller
    d = fallback_dir(c)
    cleanup.append(d)
    d.mkdir(mode=0o700)
    os.chown(d, NOBODY, NOBODY)
    err = _refused_adduser(c, Planted(d / "admin.sock", NOBODY))
    assert f"owned by uid {NOBODY}" in err and "data directory's owner" in err


def test_adduser_refuses_a_socket_directory_others_can_write(tmp_path: Path,
                                                             cleanup: list[Path]) -> None:
    c = deep_controller(tmp_path)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin")
    d = fallback_dir(c)
    cleanup.append(d)
    d.mkdir()
    os.chmod(d, 0o777)  # anyone could have swapped the socket in there
    err = _refused_adduser(c, Planted(d / "admin.sock"))
    assert "only its owner can write to" in err


@as_root
def test_adduser_refuses_a_planted_listener_in_the_data_directory(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin")
    err = _refused_adduser(c, Planted(c.data_dir / "admin.sock", NOBODY))
    assert f"its socket {c.data_dir / 'admin.sock'} is owned by uid {NOBODY}" in err


def test_admin_call_explains_os_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(OvercastError, match="is not a directory"):
        admin.call(Settings(data_dir=str(a_file)), "GET", "/admin/status")
    with pytest.raises(OvercastError, match="a part of this path is not a directory"):
        admin.call(Settings(data_dir=str(a_file / "data")), "GET", "/admin/status")
    assert admin.call(Settings(data_dir=str(tmp_path / "none")), "GET", "/admin/status") is None
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    listener = Planted(data / "admin.sock")  # ours this time: the checks pass
    try:
        for err, message in ((PermissionError(errno.EACCES, "Permission denied"), "no permission to use"),
                             (NotADirectoryError(errno.ENOTDIR, "Not a directory"), "not a directory"),
                             (OSError(errno.EIO, "Input/output error"), "Input/output error")):
            def connect(self: Any, err: OSError = err) -> None:
                raise err
            monkeypatch.setattr(admin._UnixConnection, "connect", connect)
            with pytest.raises(OvercastError, match=message):
                admin.call(Settings(data_dir=str(data)), "GET", "/admin/status")
    finally:
        listener.close()


def test_adduser_with_a_bad_data_dir_says_so(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    c = Controller(tmp_path)
    for data_dir in (a_file, a_file / "data"):
        for args in (("adduser", "nina@example.com", "--password-stdin"), ("audit", "verify")):
            r = c.cli(*args, "--data-dir", str(data_dir), input="nina password 1\n")
            assert r.returncode == 1, (args, r.stderr)
            assert r.stderr.startswith("overcast: ") and "not a directory" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr


# ---- the store held by a controller that is starting ---------------------------------------

def _first_line(stream: Any, timeout: float) -> str:
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: q.put(stream.readline()), daemon=True).start()
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"nothing on the stream in {timeout}s") from None


def test_adduser_waits_for_a_starting_controller(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    # what a starting controller holds between opening its store and binding its socket
    store = open_store(c.data_dir / "store")
    held = True
    proc = subprocess.Popen([*OVERCAST, "adduser", "lena@example.com", "--password-stdin", "--json"],
                            env=c.env(), cwd=str(ROOT), text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write("lena password 1\n")
        proc.stdin.close()
        line = _first_line(proc.stderr, 20)
        assert "waiting for the running controller" in line, line
        store.close()
        held = False
        c.start()
        proc.wait(30)
        assert proc.stdout is not None
        out, err = proc.stdout.read(), line + proc.stderr.read()
        assert proc.returncode == 0, err
        assert "open for writing" not in err and "Traceback" not in err
        assert json.loads(out)["user"]["email"] == "lena@example.com"
        assert can_log_in(c, "lena@example.com", "lena password 1")
        h = c.session("lena@example.com", "lena password 1")
        entry = h.get("/api/v2/logs?action=user.create").body["data"]
        assert entry and entry[0]["actor"] == {"kind": "admin", "via": "admin"}  # the controller wrote it
    finally:
        if proc.poll() is None:
            proc.kill()
        if held:
            store.close()
        if c.proc is not None:
            c.stop()


def test_adduser_gives_up_clearly_when_no_controller_answers(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin")
    store = open_store(c.data_dir / "store")
    try:
        t = time.monotonic()
        r = adduser(c, "omar@example.com", "omar password 1", "--wait", "1")
        took = time.monotonic() - t
    finally:
        store.close()
    assert r.returncode == 1, r.stderr
    assert "waiting for the running controller" in r.stderr
    assert "no controller answered" in r.stderr and str(c.data_dir) in r.stderr
    assert "open for writing" not in r.stderr and "Traceback" not in r.stderr
    assert took < 15


# ---- audit verify -------------------------------------------------------------------------

def test_audit_verify_running_and_stopped(fresh_controller: Controller) -> None:
    c = fresh_controller
    for i in range(3):
        c.token(name=f"verify {i}")
    n = last_seq(c)
    code, text, js = verify(c)
    assert code == 0, text
    assert text.strip() == f"audit log intact: {n} entries verified"
    assert js == {"ok": True, "entries": n, "broken_at": None, "reason": ""}
    assert c.stop() == 0
    code, text, js = verify(c)  # offline, read-only
    assert code == 0, text
    assert js["ok"] and js["entries"] == n
    # a read-only check leaves the store usable: the controller starts again
    start_again(c)
    assert can_log_in(c, ADMIN_EMAIL, "correct horse battery")


def test_audit_verify_without_data(tmp_path: Path) -> None:
    c = Controller(tmp_path)
    r = c.cli("audit", "verify")
    assert r.returncode == 1
    assert "no Overcast data" in r.stderr


def _tamper(c: Controller, fn: Any) -> None:
    store = open_store(c.data_dir / "store")
    try:
        fn(store)
    finally:
        store.close()


def test_tampered_entry_is_named(fresh_controller: Controller) -> None:
    c = fresh_controller
    for i in range(4):
        c.token(name=f"tamper {i}")
    n = last_seq(c)
    assert c.stop() == 0
    victim = n - 3

    def edit(store: Any) -> None:
        e = json.loads(store.get(entry_key(victim)))
        e["details"]["token_name"] = "innocent"
        e["details"]["forged"] = True
        store.put(entry_key(victim), json.dumps(e, separators=(",", ":")).encode())

    _tamper(c, edit)
    code, text, js = verify(c)
    assert code == 1
    assert f"BROKEN at entry {victim}" in text and "altered" in text
    assert js["ok"] is False and js["broken_at"] == victim and js["entries"] == victim - 1
    # the running controller reports the same through its admin socket
    start_again(c)
    code, text, js = verify(c)
    assert code == 1 and js["broken_at"] == victim, text


def test_reordered_or_relinked_entry_is_named(fresh_controller: Controller) -> None:
    """Re-hashing an altered entry does not help: the next entry no longer links to it."""
    c = fresh_controller
    c.token(name="relink")
    n = last_seq(c)
    assert c.stop() == 0
    from controller.audit.chain import compute_hash

    victim = n - 1

    def edit(store: Any) -> None:
        e = json.loads(store.get(entry_key(victim)))
        e["outcome"] = "denied"
        e["hash"] = compute_hash(e["prev"], e)
        store.put(entry_key(victim), json.dumps(e).encode())

    _tamper(c, edit)
    code, text, js = verify(c)
    assert code == 1
    assert js["broken_at"] == victim + 1 and f"entry {victim + 1}" in text
    assert "does not link" in js["reason"]


def test_rehashed_last_entry_is_named(fresh_controller: Controller) -> None:
    """The last entry has no successor to break the link: the head catches it."""
    c = fresh_controller
    n = last_seq(c)
    assert c.stop() == 0
    from controller.audit.chain import compute_hash

    def edit(store: Any) -> None:
        e = json.loads(store.get(entry_key(n)))
        e["actor"]["email"] = "someone-else@example.com"
        e["hash"] = compute_hash(e["prev"], e)
        store.put(entry_key(n), json.dumps(e).encode())

    _tamper(c, edit)
    code, text, js = verify(c)
    assert code == 1
    assert js["broken_at"] == n and js["entries"] == n - 1
    assert f"BROKEN at entry {n}" in text and "altered" in js["reason"]
    assert "removed" not in js["reason"]


def test_forged_entry_after_the_head_is_named(fresh_controller: Controller) -> None:
    c = fresh_controller
    n = last_seq(c)
    assert c.stop() == 0
    from controller.audit.chain import compute_hash

    def append(store: Any) -> None:
        last = json.loads(store.get(entry_key(n)))
        forged = dict(last, seq=n + 1, id=f"{n + 1:016d}", prev=last["hash"], action="user.create")
        forged["hash"] = compute_hash(last["hash"], forged)
        store.put(entry_key(n + 1), json.dumps(forged).encode())

    _tamper(c, append)
    code, text, js = verify(c)
    assert code == 1
    assert js["broken_at"] == n + 1 and f"BROKEN at entry {n + 1}" in text
    assert "added" in js["reason"]


def test_deleted_last_entries_are_reported(fresh_controller: Controller) -> None:
    c = fresh_controller
    for i in range(3):
        c.token(name=f"truncate {i}")
    n = last_seq(c)
    assert c.stop() == 0

    def cut(store: Any) -> None:
        for seq in (n, n - 1):
            e = json.loads(store.get(entry_key(seq)))
            store.delete(entry_key(seq))
            store.delete(org_index_key(e.get("org") or "_", seq))

    _tamper(c, cut)
    code, text, js = verify(c)
    assert code == 1
    assert js["ok"] is False and js["entries"] == n - 2 and js["broken_at"] == n - 1
    assert "removed from the end" in js["reason"] and f"BROKEN at entry {n - 1}" in text


def test_deleted_middle_entry_is_reported(fresh_controller: Controller) -> None:
    c = fresh_controller
    c.token(name="middle")
    n = last_seq(c)
    assert c.stop() == 0
    _tamper(c, lambda store: store.delete(entry_key(2)))
    code, text, js = verify(c)
    assert code == 1
    assert js["broken_at"] == 2 and "entry 2 is missing" in js["reason"]
    assert n > 2


def test_head_is_kept(fresh_controller: Controller) -> None:
    """The head the truncation check relies on exists and matches the last entry."""
    c = fresh_controller
    n = last_seq(c)
    assert c.stop() == 0
    store = open_store(c.data_dir / "store", "ro")
    try:
        head = json.loads(store.get(HEAD_KEY))
        last = json.loads(store.get(entry_key(n)))
    finally:
        store.close()
    assert head == {"seq": n, "hash": last["hash"]}


# ---- make run and make bench (packaging/dev) ----------------------------------------------

def _run_sh(run_dir: Path, extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """``make run``'s script with its state under ``run_dir``, on free ports: (process, HTTP port)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERCAST_")}
    env.update({"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")]),
                "OVERCAST_RUN_DIR": str(run_dir), "OVERCAST_HTTP": f"127.0.0.1:{port}",
                "OVERCAST_GRPC": f"127.0.0.1:{free_port()}",
                "OVERCAST_AGENTS": f"127.0.0.1:{free_port()}", **(extra or {})})
    proc = subprocess.Popen(["sh", str(ROOT / "packaging" / "dev" / "run.sh")], env=env,
                            cwd=str(ROOT), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return proc, port


def _until_ready(proc: subprocess.Popen[str], while_ready: Callable[[str], None] | None = None,
                 timeout: float = 40) -> str:
    """run.sh's output up to the controller's ready line, or to its exit. When ready, call
    ``while_ready(output)``, then stop the controller (SIGTERM)."""
    assert proc.stdout is not None
    q: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
        q.put(None)

    threading.Thread(target=read, daemon=True).start()
    out = ""
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                line = q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"run.sh: no ready line in {timeout}s:\n{out}") from None
            if line is None:
                return out
            out += line
            if "overcast controller ready" in line:
                if while_ready is not None:
                    while_ready(out)
                return out
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(20)


def _shown_password(out: str) -> str:
    return next(ln.split()[1] for ln in out.splitlines() if ln.strip().startswith("password:"))


def _logs_in(port: int, password: str) -> Callable[[str], None]:
    def check(out: str) -> None:
        r = Http(f"http://127.0.0.1:{port}").post(
            "/api/v2/auth/sessions", {"email": "admin@example.com", "password": password})
        assert r.status == 200, (r.body, out)
    return check


def test_make_run_keeps_only_a_password_that_works(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    # adduser fails (an unusable data directory): nothing is kept, no password is shown
    proc, _ = _run_sh(run_dir, {"OVERCAST_DATA_DIR": str(a_file)})
    out = _until_ready(proc)
    assert proc.returncode != 0, out
    assert "could not create the admin account" in out and "not a directory" in out, out
    assert not list(run_dir.glob("admin-password*")), out
    assert "password:" not in out
    # the next run makes the admin, and the password it prints is the one that works
    proc, port = _run_sh(run_dir)
    holder: list[str] = []

    def shown_password_works(o: str) -> None:
        holder.append(_shown_password(o))
        _logs_in(port, holder[0])(o)

    out = _until_ready(proc, shown_password_works)
    assert "overcast controller ready" in out, out
    pwfile = run_dir / "admin-password"
    assert stat.S_IMODE(pwfile.stat().st_mode) == 0o600
    assert pwfile.read_text().strip() == holder[0]
    # a third run shows the same password, and it still works
    proc, port = _run_sh(run_dir)
    out = _until_ready(proc, _logs_in(port, holder[0]))
    assert "overcast controller ready" in out and _shown_password(out) == holder[0], out


def test_make_run_enrols_and_runs_a_local_agent(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc, port = _run_sh(run_dir)

    def local_agent_reports(out: str) -> None:
        h = Http(f"http://127.0.0.1:{port}")
        r = h.post("/api/v2/auth/sessions", {"email": "admin@example.com",
                                             "password": _shown_password(out)})
        assert r.status == 200, r.body
        deadline = time.monotonic() + 30
        machines: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            machines = h.get("/api/v2/machines?search=tags.local:true").body["data"]
            if machines and machines[0]["state"] == "running":
                break
            time.sleep(0.3)
        assert machines and machines[0]["state"] == "running", (machines, out)
        assert (run_dir / "agent" / "agent.json").exists()

    out = _until_ready(proc, local_agent_reports)
    assert "a local agent reports this host" in out, out
    # Ctrl-C (here SIGTERM) stops the agent with the controller
    assert proc.returncode == 0, out
    for line in subprocess.run(["pgrep", "-fa", str(run_dir / "agent")], capture_output=True,
                               text=True).stdout.splitlines():
        raise AssertionError(f"agent left running: {line}")


def test_make_run_says_when_the_admin_exists_without_a_password_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    c = Controller(tmp_path)
    c.data_dir = run_dir / "data"
    c.adduser("admin@example.com", "made by hand 123", "--admin")
    proc, port = _run_sh(run_dir)
    out = _until_ready(proc, _logs_in(port, "made by hand 123"))
    assert "overcast controller ready" in out, out  # it still runs the controller
    assert "the admin admin@example.com already exists" in out, out
    assert "password: (unknown" in out
    assert not list(run_dir.glob("admin-password*"))


def _fake_tools(tmp_path: Path, uid: int, apt_install_fails: bool) -> dict[str, str]:
    """A PATH with only what bootstrap.sh uses, no wrk, and stand-ins for id, dpkg-query and
    apt-get: python3-venv is installed, wrk is not."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cat", "cksum", "cut", "grep", "dirname", "python3"):
        path = shutil.which(tool)
        assert path, tool
        (bin_dir / tool).symlink_to(path)
    shims = {
        "id": f'[ "$1" = -u ] && echo {uid}',
        "dpkg-query": 'case "$*" in *wrk*) exit 1 ;; *) printf "install ok installed" ;; esac',
        "apt-get": ('echo "apt-get $*" >> "$APT_LOG"; '
                    + ('case "$*" in *install*) exit 100 ;; esac' if apt_install_fails else "true")),
    }
    for name, body in shims.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        os.chmod(bin_dir / name, 0o755)
    return {"PATH": str(bin_dir), "APT_LOG": str(tmp_path / "apt.log")}


def _bootstrap_copy(tmp_path: Path) -> Path:
    """bootstrap.sh in a tree of its own whose virtualenv looks installed (no pip runs)."""
    repo = tmp_path / "repo"
    (repo / "packaging" / "dev").mkdir(parents=True)
    shutil.copy(ROOT / "packaging" / "dev" / "bootstrap.sh", repo / "packaging" / "dev")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(venv_bin / "python", 0o755)
    total = subprocess.run(["sh", "-c", "cat pyproject.toml | cksum | cut -d' ' -f1"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.strip()
    (repo / ".venv" / ".overcast-installed-controller,test").write_text(total + "\n")
    return repo


@pytest.mark.parametrize("uid", [1000, 0], ids=["user", "root"])
def test_make_bench_bootstrap_goes_on_without_wrk(tmp_path: Path, uid: int) -> None:
    repo = _bootstrap_copy(tmp_path)
    env = _fake_tools(tmp_path, uid, apt_install_fails=True)
    r = subprocess.run(["/bin/sh", str(repo / "packaging" / "dev" / "bootstrap.sh"), "bench"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "wrk" in r.stderr and "going on without it" in r.stderr
    log = (tmp_path / "apt.log").read_text() if (tmp_path / "apt.log").exists() else ""
    if uid:
        assert log == ""  # a user cannot install: nothing is tried
    else:
        assert "install" in log and "wrk" in log  # root tries, and a failure is not fatal
