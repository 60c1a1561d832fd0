"""The admin commands ``overcast adduser`` and ``overcast audit verify``, with the controller
running (through its admin socket) and stopped (on the store itself), and the audit chain
catching a tampered or truncated log."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from controller.audit.chain import HEAD_KEY, entry_key, org_index_key
from controller.store import open_store
from tests.support.controller import ADMIN_EMAIL, Controller


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
