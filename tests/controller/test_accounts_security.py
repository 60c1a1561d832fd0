"""Security pieces of accounts, audit and events, in-process: the bus keeps platform events
from org-less subscriptions, ``scrub`` reaches into lists, audit entries carry a version, the
audit limiter and the login throttle count as they should, expired sessions are swept, and a
login never writes back a stale user document."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.accounts.model import USER
from controller.accounts.service import AccountService
from controller.accounts.throttle import LoginThrottle
from controller.audit.chain import GENESIS, HEAD_KEY, compute_hash, entry_key, verify
from controller.audit.limit import AuditLimiter
from controller.errors import Conflict, RateLimited, Unauthenticated
from controller.events.bus import EventBus
from controller.events.model import Actor, Event
from controller.events.writer import Change, Writer, scrub
from controller.services import Services, build_services
from controller.settings import Settings
from controller.store import open_store
from controller.store.docs import load

PW = "the right password"


# ---- events and audit entries -------------------------------------------------------------

def test_the_bus_gives_platform_events_to_platform_subscriptions_only() -> None:
    bus = EventBus()
    orgless, org, everything = bus.subscribe(""), bus.subscribe("o1"), bus.subscribe(None)
    bus.publish([Event("audit", "log", "1", "", time.time(), {"actor": {"email": "a@b.cc"}}),
                 Event("created", "token", "2", "o1", time.time()),
                 Event("created", "token", "3", "o2", time.time())])
    assert orgless.queue.qsize() == 0
    assert [org.queue.get_nowait().id for _ in range(org.queue.qsize())] == ["2"]
    assert [everything.queue.get_nowait().id for _ in range(everything.queue.qsize())] == ["1", "2", "3"]


def test_scrub_reaches_into_lists() -> None:
    details = {"items": [{"password": "p1", "name": "a"}, [{"api_key": "k"}, "plain"]],
               "nested": {"list": [{"secret": "s"}]}, "tokens": ["t1"], "token_name": "ci"}
    assert scrub(details) == {"items": [{"password": "***", "name": "a"}, [{"api_key": "***"}, "plain"]],
                              "nested": {"list": [{"secret": "***"}]}, "tokens": "***",
                              "token_name": "ci"}


def test_entries_carry_a_version_and_older_entries_without_it_still_verify(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")
    legacy = {"time": 1.0, "org": "", "actor": {"kind": "system"}, "action": "x.old",
              "target": {"kind": "", "id": ""}, "outcome": "success", "source": {},
              "details": {}, "id": f"{1:016d}", "seq": 1, "prev": GENESIS}
    legacy["hash"] = compute_hash(GENESIS, legacy)
    store.put(entry_key(1), json.dumps(legacy).encode())
    store.put(HEAD_KEY, json.dumps({"seq": 1, "hash": legacy["hash"]}).encode())
    w = Writer(store)  # goes on from the legacy head
    entry = w.commit(Actor("user", id="u"), Change("x.new", org="o1"))
    assert entry["v"] == 1 and entry["seq"] == 2
    assert json.loads(store.get(entry_key(2)) or b"")["v"] == 1
    r = verify(store)
    assert r.ok and r.entries == 2, r


# ---- the audit limiter and the login throttle ---------------------------------------------

class Clock:
    def __init__(self, t: float = 6000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_audit_limiter_writes_twenty_a_minute_then_reports_the_rest() -> None:
    clock = Clock()
    lim = AuditLimiter(20, 60.0, clock=clock)
    key = ("auth.refused", "", "192.0.2.1")
    got = [lim.admit(key) for _ in range(100)]
    assert got == [0] * 20 + [None] * 80
    assert lim.admit(("auth.refused", "", "192.0.2.2")) == 0  # another address has its own
    clock.t += 60
    assert lim.admit(key) == 80  # the first of the next minute says how many were left out
    assert lim.admit(key) == 0


def test_audit_limiter_flushes_quiet_addresses_and_stays_bounded() -> None:
    clock = Clock()
    lim = AuditLimiter(2, 60.0, max_keys=10, clock=clock)
    for _ in range(5):
        lim.admit(("a", "", "192.0.2.1"))
    assert lim.flush() == []  # the minute has not ended
    clock.t += 60
    assert lim.flush() == [(("a", "", "192.0.2.1"), 3)]
    assert lim.flush() == [] and len(lim) == 0
    for i in range(1000):  # a spray of addresses
        lim.admit(("a", "", f"10.0.{i // 256}.{i % 256}"))
    assert len(lim) <= 10 + 16
    assert lim.admit(("a", "", "10.9.9.9")) is None  # the overflow key is spent too


def test_login_throttle_counts_attempts_when_they_start() -> None:
    t = LoginThrottle(3, 300)
    stamps = [t.attempt("e:x", "ip:1") for _ in range(3)]  # three in flight: none has failed yet
    with pytest.raises(RateLimited):
        t.attempt("e:x", "ip:1")
    t.release(stamps[0], "ip:1")  # one proved right
    t.succeed("e:x")
    t.attempt("e:x", "ip:1")  # room again
    with pytest.raises(RateLimited):
        t.attempt("e:y", "ip:1")  # the address still holds two failures and this one


# ---- an in-process controller -------------------------------------------------------------

@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(data_dir=str(tmp_path), http="127.0.0.1:7080", grpc="127.0.0.1:7443")
    store = open_store(tmp_path / "store")
    try:
        yield build_services(settings, store)
    finally:
        store.close()


async def _user(a: AccountService, email: str = "u@example.com") -> str:
    user, _ = await a.create_user(Actor("admin", via="admin"), email, PW, org_name="Acme")
    return str(user["id"])


def _entries(s: Services) -> int:
    return s.store.count("audit/")


async def test_sweep_expired_deletes_expired_sessions_and_their_index(services: Services) -> None:
    a = services.accounts
    uid = await _user(a)
    secrets = [(await a.login("192.0.2.1", "u@example.com", PW))[0] for _ in range(7)]
    keys = {k: v for k, v in services.store.scan("session/")}
    assert len(keys) == 7
    # five of them expire (as if they were old)
    expired = list(keys)[:5]
    for k in expired:
        doc = json.loads(keys[k])
        doc["_expires_at"] = time.time() - 1
        services.store.put(k, json.dumps(doc).encode())
    before = _entries(services)
    assert a.sweep_expired(batch_size=2) == 5
    left = [k for k, _ in services.store.scan("session/")]
    assert sorted(left) == sorted(set(keys) - set(expired))
    assert services.store.count(f"usersession/{uid}/") == 2
    assert _entries(services) == before  # bookkeeping: not audited
    assert a.sweep_expired() == 0
    live = [s for s in secrets if f"session/{hashlib.sha256(s.encode()).hexdigest()}" in left]
    assert len(live) == 2
    for s in live:
        assert a.resolve_session(s).user_id == uid
    # and everything goes once its time has come
    assert a.sweep_expired(now=time.time() + 10 ** 9) == 2
    assert services.store.count("session/") == 0 and services.store.count("usersession/") == 0


async def test_login_does_not_write_back_a_password_changed_during_the_check(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    a = services.accounts
    uid = await _user(a)
    key = f"user/{uid}"
    new_hash = a.hasher.hash("the new password")
    check = a._verify

    def racing_verify(pw_hash: str | None, password: str) -> bool:
        ok = check(pw_hash, password)
        # an administrator resets the password while the old one is being checked
        doc = json.loads(services.store.get(key) or b"")
        services.store.put(key, json.dumps(dict(doc, _pw=new_hash)).encode())
        return ok

    monkeypatch.setattr(a, "_verify", racing_verify)
    with pytest.raises(Unauthenticated):
        await a.login("192.0.2.1", "u@example.com", PW)
    assert load(USER, services.store.get(key) or b"")["_pw"] == new_hash
    assert services.store.count("session/") == 0


async def test_login_keeps_a_change_made_during_the_check(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    a = services.accounts
    uid = await _user(a)
    key = f"user/{uid}"
    check = a._verify

    def racing_verify(pw_hash: str | None, password: str) -> bool:
        ok = check(pw_hash, password)
        doc = json.loads(services.store.get(key) or b"")
        services.store.put(key, json.dumps(dict(doc, first_name="Renamed")).encode())
        return ok

    monkeypatch.setattr(a, "_verify", racing_verify)
    _, p = await a.login("192.0.2.1", "u@example.com", PW)
    doc = load(USER, services.store.get(key) or b"")
    assert doc["first_name"] == "Renamed" and doc["last_login"]
    assert p.user["first_name"] == "Renamed"


async def test_login_retries_once_when_the_user_changes_between_read_and_write(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    a = services.accounts
    uid = await _user(a)
    key = f"user/{uid}"
    commit = services.writer.commit
    calls: list[str] = []

    def racing_commit(actor: Actor, change: Change) -> dict[str, Any]:
        calls.append(change.action)
        if change.action == "session.create" and change.outcome == "success" and len(calls) == 1:
            doc = json.loads(services.store.get(key) or b"")
            services.store.put(key, json.dumps(dict(doc, first_name="Meanwhile")).encode())
        return commit(actor, change)

    monkeypatch.setattr(services.writer, "commit", racing_commit)
    await a.login("192.0.2.1", "u@example.com", PW)
    assert calls == ["session.create", "session.create"]  # the first one met a Conflict
    assert load(USER, services.store.get(key) or b"")["first_name"] == "Meanwhile"
    assert services.store.count("session/") == 1

    # a user that keeps changing: the second conflict is the caller's (nothing stored)
    def always_racing(actor: Actor, change: Change) -> dict[str, Any]:
        if change.action == "session.create" and change.outcome == "success":
            doc = json.loads(services.store.get(key) or b"")
            services.store.put(key, json.dumps(dict(doc, n=time.time())).encode())
        return commit(actor, change)

    monkeypatch.setattr(services.writer, "commit", always_racing)
    with pytest.raises(Conflict):
        await a.login("192.0.2.1", "u@example.com", PW)
    assert services.store.count("session/") == 1
