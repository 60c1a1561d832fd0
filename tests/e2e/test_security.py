"""Security fixes, through a real controller as a user (or an attacker) would meet them:
callers without an organisation see nothing of the platform's log or events; owners invite
and only the invited user makes an invitation a membership (and e-mails cannot be told apart
by the answer); login throttling holds against parallel guesses; login CSRF (non-JSON bodies,
foreign Origin); no password typed into the e-mail field in the log; no audit flood from
unauthenticated requests; huge token lifetimes; refused organisation at login audited.

The module's controller sits behind a (pretend) TLS proxy, so each test speaks from its own
address (X-Forwarded-For) and one test's throttling or audit bounds do not reach another's."""

from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, Response

PUBLIC_URL = "https://overcast.example.test"
SESSIONS = "/api/v2/auth/sessions"
TOKENS = "/api/v2/auth/tokens"
PW = "a long enough password"
TEN_YEARS = 315360000

_addresses = itertools.count(10)


def new_ip() -> str:
    """An address of its own (the pretend proxy reports it)."""
    return f"198.51.100.{next(_addresses)}"


def tag() -> str:
    return uuid.uuid4().hex[:8]


@dataclass
class From(Http):
    """A client whose requests reach the controller through the proxy from ``ip``."""

    ip: str = "127.0.0.1"

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        return super().request(method, path, body, raw=raw,
                               headers={"X-Forwarded-For": self.ip, **(headers or {})})


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("security"), {
        "OVERCAST_BEHIND_PROXY": "true", "OVERCAST_EXTERNAL_URL": PUBLIC_URL,
        "OVERCAST_CHECK_EXTERNAL_URL": "false", "OVERCAST_TOKEN_MAX_TTL": "0"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def admin(ctl: Controller) -> Http:
    """The platform admin, with a token (no throttle or session in the way)."""
    return Http(ctl.url, ctl.token())


def session(c: Controller, email: str, password: str = PW, ip: str | None = None) -> From:
    h = From(c.url, ip=ip or new_ip())
    r = h.post(SESSIONS, {"email": email, "password": password})
    assert r.status == 200, r.body
    h.csrf = r.body["data"]["csrf_token"]
    return h


def audit(admin: Http, **params: str) -> list[dict[str, Any]]:
    r = admin.get("/api/v2/logs?" + urlencode({"allorgs": "true", "limit": "1000", **params}))
    assert r.status == 200, r.body
    return r.body["data"]  # type: ignore[no-any-return]


def audit_raw(admin: Http) -> bytes:
    r = admin.get("/api/v2/logs?allorgs=true&limit=1000")
    assert r.status == 200, r.body
    return r.raw


def error(r: Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status == status, (r.status, r.body)
    assert isinstance(r.body, dict) and set(r.body) == {"error"}, r.body
    if code is not None:
        assert r.body["error"]["code"] == code, r.body
    return r.body["error"]  # type: ignore[no-any-return]


def names(r: Response) -> list[str]:
    assert r.status == 200, r.body
    return sorted(o["name"] for o in r.body["data"])


async def _ws_handshake(c: Controller, h: Http, query: str = "") -> tuple[int, Any]:
    hdrs = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Cookie": "; ".join(f"{k}={v}" for k, v in h.cookies.items())}
    url = c.url + "/api/v2/events" + (f"?{query}" if query else "")
    async with aiohttp.ClientSession() as s, s.get(url, headers=hdrs) as r:
        if r.status == 101:
            return 101, None
        return r.status, await r.json(content_type=None)


def raw_post(c: Controller, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, list[str]]:
    """A POST with exactly these headers (the test client always says application/json)."""
    conn = http.client.HTTPConnection("127.0.0.1", c.http_port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload), resp.headers.get_all("Set-Cookie") or []
    finally:
        conn.close()


# ---- 1: no organisation, no platform log, no events ---------------------------------------

def test_a_user_without_an_organisation_reads_no_platform_log_and_gets_no_events(
        ctl: Controller, admin: Http) -> None:
    t = tag()
    email = f"loner-{t}@example.com"
    made = ctl.adduser(email, PW, "--org", "Acme")  # a member of Acme ...
    acme, uid = made["org"]["id"], made["user"]["id"]
    ip = new_ip()
    h = session(ctl, email, ip=ip)
    assert h.delete(f"/api/v2/orgs/{acme}/members/{uid}").status == 204  # ... who leaves it
    # entries of no organisation: a failed login naming somebody's e-mail, from elsewhere
    marker = f"somebody-{t}@example.com"
    error(From(ctl.url, ip=new_ip()).post(SESSIONS, {"email": marker, "password": "not it at all"}), 401)

    h = session(ctl, email, ip=ip)  # signs in again: in no organisation now
    me = h.get("/api/v2/auth").body["data"]
    assert me["org"] is None and me["orgs"] == []
    for q in ("", "?limit=1000", "?allorgs=true", "?action=session.create"):
        r = h.get("/api/v2/logs" + q)
        assert r.status == 200, r.body
        assert r.body["data"] == [] and r.body["meta"]["total"] == 0, r.body
        assert marker.encode() not in r.raw
    for q in ("", "allorgs=true"):
        status, body = asyncio.run(_ws_handshake(ctl, h, q))
        assert status == 403, (q, status, body)
        assert body["error"]["code"] == "forbidden"
        assert "no organisation" in body["error"]["message"]
    # the platform's entries are still there, for platform admins asking for every org
    assert [e for e in audit(admin, action="session.create", outcome="denied")
            if e["actor"].get("email") == marker and e["org"] == ""]


# ---- 2: invitations -----------------------------------------------------------------------

def test_owners_invite_alike_for_every_e_mail_and_only_the_invited_user_accepts(
        ctl: Controller, admin: Http) -> None:
    t = tag()
    victim, mallory = f"victim-{t}@example.com", f"mallory-{t}@example.com"
    ctl.adduser(victim, PW, "--org", f"Victims-{t}")
    ctl.adduser(mallory, PW, "--org", f"Mallory-{t}")
    m = session(ctl, mallory)
    aaa_name = f"AAA-{t}"  # sorts before the victim's own organisation
    r = m.post("/api/v2/orgs", {"name": aaa_name})
    assert r.status == 201, r.body
    aaa = r.body["id"]

    # the same answer whether or not somebody has the e-mail
    nobody = f"nobody-{t}@example.com"
    for email in (victim, nobody, victim.upper()):
        r = m.post(f"/api/v2/orgs/{aaa}/members", {"email": email, "role": "owner"})
        assert r.status == 202, r.body
        assert r.body == {"email": email.lower(), "role": "owner", "status": "invited"}

    # an invitation grants nothing: not a member, not where the victim signs in
    v = session(ctl, victim)
    me = v.get("/api/v2/auth").body["data"]
    assert me["org"]["name"] == f"Victims-{t}"
    assert names(v.get("/api/v2/orgs")) == [f"Victims-{t}"]
    error(v.get(f"/api/v2/orgs/{aaa}"), 404)
    assert [x["email"] for x in m.get(f"/api/v2/orgs/{aaa}/members").body["data"]] == [mallory]
    # the victim sees it; the owner sees it pending; the unknown e-mail left nothing behind
    assert len(me["invitations"]) == 1
    inv = me["invitations"][0]
    assert inv["org"] == {"id": aaa, "name": aaa_name}
    assert inv["role"] == "owner" and inv["invited_by"] == mallory and inv["invited"]
    pending = m.get(f"/api/v2/orgs/{aaa}/invitations")
    assert pending.status == 200, pending.body
    assert [(x["email"], x["role"], x["invited_by"]) for x in pending.body["data"]] == [
        (victim, "owner", mallory)]
    entries = [e for e in audit(admin, action="invitation.create") if e["org"] == aaa]
    assert len(entries) == 3 and {e["outcome"] for e in entries} == {"success"}
    assert sorted(e["details"].get("email", "") for e in entries) == ["", victim, victim]
    assert nobody.encode() not in audit_raw(admin)

    # only the invited user makes it a membership
    error(m.post(f"/api/v2/orgs/{aaa}/invitations/accept"), 404)  # mallory has none
    r = v.post(f"/api/v2/orgs/{aaa}/invitations/accept")
    assert r.status == 200, r.body
    assert r.body["id"] == aaa and r.body["role"] == "owner"
    assert names(v.get("/api/v2/orgs")) == sorted([aaa_name, f"Victims-{t}"])
    assert v.get("/api/v2/auth").body["data"]["invitations"] == []
    assert m.get(f"/api/v2/orgs/{aaa}/invitations").body["data"] == []
    error(v.post(f"/api/v2/orgs/{aaa}/invitations/accept"), 404)  # once
    accepted = [e for e in audit(admin, action="invitation.accept") if e["org"] == aaa]
    assert len(accepted) == 1 and accepted[0]["actor"]["email"] == victim
    # a new sign-in lands in the oldest membership, not in the one whose name sorts first
    assert session(ctl, victim).get("/api/v2/auth").body["data"]["org"]["name"] == f"Victims-{t}"
    # inviting a member is a conflict (owners see their members anyway)
    error(m.post(f"/api/v2/orgs/{aaa}/members", {"email": victim}), 409, "conflict")


def test_invitations_are_declined_cancelled_and_handled_by_owners_only(
        ctl: Controller, admin: Http) -> None:
    t = tag()
    owner, dora, carl, mia = (f"{n}-{t}@example.com" for n in ("owner", "dora", "carl", "mia"))
    for who in (owner, dora, carl, mia):
        ctl.adduser(who, PW, "--org", f"Home-{who.split('@')[0]}")
    o = session(ctl, owner)
    org = o.post("/api/v2/orgs", {"name": f"Team-{t}"}).body["id"]
    for who in (dora, carl, mia):
        assert o.post(f"/api/v2/orgs/{org}/members", {"email": who}).status == 202

    d = session(ctl, dora)  # declines
    r = d.delete(f"/api/v2/orgs/{org}/invitations")
    assert r.status == 204, r.body
    error(d.delete(f"/api/v2/orgs/{org}/invitations"), 404)
    error(d.post(f"/api/v2/orgs/{org}/invitations/accept"), 404)
    assert d.get("/api/v2/auth").body["data"]["invitations"] == []
    error(d.get(f"/api/v2/orgs/{org}"), 404)

    c = session(ctl, carl)  # the owner cancels carl's (by e-mail)
    assert c.get("/api/v2/auth").body["data"]["invitations"][0]["org"]["id"] == org
    assert o.delete(f"/api/v2/orgs/{org}/invitations/{carl}").status == 204
    error(o.delete(f"/api/v2/orgs/{org}/invitations/{carl}"), 404)
    assert c.get("/api/v2/auth").body["data"]["invitations"] == []
    error(c.post(f"/api/v2/orgs/{org}/invitations/accept"), 404)

    mi = session(ctl, mia)  # accepts as a member; members do not handle invitations
    assert mi.post(f"/api/v2/orgs/{org}/invitations/accept").status == 200
    error(mi.get(f"/api/v2/orgs/{org}/invitations"), 403, "forbidden")
    error(mi.post(f"/api/v2/orgs/{org}/members", {"email": carl}), 403, "forbidden")
    assert o.post(f"/api/v2/orgs/{org}/members", {"email": carl}).status == 202
    error(mi.delete(f"/api/v2/orgs/{org}/invitations/{carl}"), 403, "forbidden")
    # strangers learn nothing of the organisation
    for r in (c.get(f"/api/v2/orgs/{org}/invitations"), d.delete(f"/api/v2/orgs/{org}/invitations/{carl}")):
        error(r, 404)
    actions = [(e["action"], e["actor"]["email"], e["outcome"]) for e in audit(admin)
               if e["org"] == org and e["action"].startswith("invitation.") and e["action"] != "invitation.create"]
    assert sorted(actions) == sorted([
        ("invitation.decline", dora, "success"), ("invitation.cancel", owner, "success"),
        ("invitation.accept", mia, "success"), ("invitation.cancel", mia, "denied")])


# ---- 3: throttling holds against parallel guesses ------------------------------------------

def test_parallel_wrong_passwords_do_not_get_past_the_throttle(ctl: Controller, admin: Http) -> None:
    email = f"target-{tag()}@example.com"
    ctl.adduser(email, PW, "--org", f"Target-{tag()}")
    ip = new_ip()
    n = 20
    start = threading.Barrier(n)

    def guess(i: int) -> int:
        h = From(ctl.url, ip=ip)
        start.wait()
        return h.post(SESSIONS, {"email": email, "password": f"guess number {i}"}).status

    with ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(guess, range(n)))
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) <= 5, statuses  # login_max_failures = 5
    assert statuses.count(429) >= n - 5, statuses
    # locked means locked, for the right password too
    error(From(ctl.url, ip=ip).post(SESSIONS, {"email": email, "password": PW}), 429, "rate_limited")
    wrong = [e for e in audit(admin, action="session.create", outcome="denied")
             if e["actor"].get("email") == email and "wrong" in e["details"]["reason"]]
    assert len(wrong) <= 5


def test_successful_logins_are_not_counted_as_failures(ctl: Controller) -> None:
    email = f"regular-{tag()}@example.com"
    ctl.adduser(email, PW, "--org", f"Regular-{tag()}")
    ip = new_ip()
    for _ in range(8):  # more than login_max_failures
        assert From(ctl.url, ip=ip).post(SESSIONS, {"email": email, "password": PW}).status == 200
    for _ in range(5):
        error(From(ctl.url, ip=ip).post(SESSIONS, {"email": email, "password": "no no no no"}), 401)
    error(From(ctl.url, ip=ip).post(SESSIONS, {"email": email, "password": "no no no no"}), 429)


# ---- 4: login CSRF ------------------------------------------------------------------------

def test_bodies_must_be_json_and_sign_in_refuses_foreign_origins(ctl: Controller, admin: Http) -> None:
    good = json.dumps({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).encode()
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=xyz", None):
        headers = {"X-Forwarded-For": new_ip()}
        if ctype is not None:
            headers["Content-Type"] = ctype
        status, body, cookies = raw_post(ctl, SESSIONS, good, headers)
        assert status == 415, (ctype, status, body)
        assert set(body) == {"error"} and body["error"]["code"] == "unsupported_media", body
        assert "application/json" in body["error"]["message"]
        assert not cookies, cookies
    # every endpoint: an authenticated change too
    name = f"plain-{tag()}"
    r = admin.post(TOKENS, raw=json.dumps({"name": name}).encode(), headers={"Content-Type": "text/plain"})
    error(r, 415, "unsupported_media")
    assert not [t for t in admin.get(TOKENS + "?limit=1000").body["data"] if t["name"] == name]
    assert admin.post(TOKENS, {"name": name}).status == 201  # as JSON it is fine

    # a browser's Origin must be ours
    for origin in ("https://evil.example.com", "null", "http://overcast.example.test",
                   "https://overcast.example.test:8443", "https://overcast.example.test.evil.com"):
        h = From(ctl.url, ip=new_ip())
        r = h.post(SESSIONS, {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                   headers={"Origin": origin})
        error(r, 403, "forbidden")
        assert "session.id" not in h.cookies, origin
    for origin in (PUBLIC_URL, PUBLIC_URL + ":443", "HTTPS://Overcast.Example.Test"):
        h = From(ctl.url, ip=new_ip())
        r = h.post(SESSIONS, {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, headers={"Origin": origin})
        assert r.status == 200, (origin, r.body)
        assert "session.id" in h.cookies


# ---- 5: what the log keeps of a login -----------------------------------------------------

def test_a_password_typed_into_the_e_mail_field_is_not_logged(ctl: Controller, admin: Http) -> None:
    typed = f"Correct-Horse-{tag()}!"
    error(From(ctl.url, ip=new_ip()).post(SESSIONS, {"email": typed, "password": "whatever it is"}), 401)
    raw = audit_raw(admin)
    assert typed.encode() not in raw and typed.lower().encode() not in raw
    newest = audit(admin, action="session.create", outcome="denied")[0]
    assert newest["actor"]["email"] == "(not an e-mail address)"
    assert newest["details"]["reason"] == "wrong e-mail or password"
    assert newest["v"] == 1  # entries carry their schema version
    # a real e-mail is still kept: whose account was tried is what the log is for
    email = f"tried-{tag()}@example.com"
    error(From(ctl.url, ip=new_ip()).post(SESSIONS, {"email": email, "password": "whatever it is"}), 401)
    assert audit(admin, action="session.create", outcome="denied")[0]["actor"]["email"] == email


# ---- 7: token lifetimes -------------------------------------------------------------------

def test_huge_token_lifetimes_are_refused_naming_the_field(ctl: Controller, admin: Http) -> None:
    # token_max_ttl = 0 here: tokens may live forever (ttl 0), yet no expiry past 10 years
    for ttl in (10 ** 12, TEN_YEARS + 1, 2 ** 62):
        err = error(admin.post(TOKENS, {"name": f"huge-{tag()}", "ttl": ttl}), 422, "invalid")
        assert err["details"]["field"] == "ttl", err
    r = admin.post(TOKENS, {"name": f"decade-{tag()}", "ttl": TEN_YEARS})
    assert r.status == 201, r.body
    assert int(r.body["expires"][:4]) >= time.gmtime().tm_year + 9
    r = admin.post(TOKENS, {"name": f"forever-{tag()}", "ttl": 0})
    assert r.status == 201 and r.body["expires"] == "", r.body


# ---- 9: a right password for somebody else's organisation ----------------------------------

def test_a_login_into_an_organisation_one_is_not_in_is_refused_and_audited(
        ctl: Controller, admin: Http) -> None:
    email = f"outsider-{tag()}@example.com"
    uid = ctl.adduser(email, PW, "--org", f"Outside-{tag()}")["user"]["id"]
    ip = new_ip()
    for _ in range(7):  # the password is right: these are no failed logins (no 429)
        error(From(ctl.url, ip=ip).post(SESSIONS, {"email": email, "password": PW, "org": "Acme"}),
              404, "not_found")
    denied = [e for e in audit(admin, action="session.create", outcome="denied")
              if e["actor"].get("email") == email]
    assert len(denied) == 7, denied
    assert denied[0]["target"] == {"kind": "user", "id": uid}
    assert denied[0]["actor"]["id"] == uid and denied[0]["source"] == {"ip": ip, "via": "rest"}
    assert "organisation" in denied[0]["details"]["reason"] and denied[0]["details"]["org"] == "Acme"
    assert From(ctl.url, ip=ip).post(SESSIONS, {"email": email, "password": PW}).status == 200


# ---- 6: no audit flood from unauthenticated requests (last: it waits for the next minute) ---

def test_unauthenticated_requests_cannot_flood_the_audit_log(ctl: Controller, admin: Http) -> None:
    ip = new_ip()
    bad = From(ctl.url, token="oc_" + uuid.uuid4().hex, ip=ip)
    for _ in range(100):
        error(bad.get("/api/v2/auth"), 401)
    # throttled logins from another address: 5 failures, then 40 refused at once
    ip2, email = new_ip(), f"flooded-{tag()}@example.com"
    login = From(ctl.url, ip=ip2)
    for i in range(45):
        login.post(SESSIONS, {"email": email, "password": f"wrong password {i}"})
    error(login.post(SESSIONS, {"email": email, "password": "wrong again"}), 429)  # the 46th

    def refused() -> list[dict[str, Any]]:
        return [e for e in audit(admin, action="auth.refused") if e["source"]["ip"] == ip]

    def throttled() -> list[dict[str, Any]]:
        return [e for e in audit(admin, action="session.create", outcome="denied")
                if e["source"]["ip"] == ip2 and ("too many" in e["details"]["reason"]
                                                 or e["source"]["via"] == "system")]

    # at most 20 a minute per address (the burst may straddle two minutes)
    assert 1 <= len(refused()) <= 40, len(refused())
    assert 1 <= len(throttled()) <= 40, len(throttled())
    # another address is not held back by the first
    other = new_ip()
    error(From(ctl.url, token="oc_" + uuid.uuid4().hex, ip=other).get("/api/v2/auth"), 401)
    assert len([e for e in audit(admin, action="auth.refused") if e["source"]["ip"] == other]) == 1

    # in the next minute the first entry from the address says how many were left out (or,
    # when the minute's maintenance ran first, its summary entry just before it does)
    time.sleep(60 - time.time() % 60 + 0.5)
    error(bad.get("/api/v2/auth"), 401)
    error(login.post(SESSIONS, {"email": email, "password": "and again"}), 429)
    for entries, total in ((refused(), 101), (throttled(), 42)):
        newest = entries[:2] if entries[0]["details"].get("suppressed") is None else entries[:1]
        assert newest[-1]["details"]["suppressed"] > 0, newest
        # every attempt is either an entry or counted in one
        assert len(entries) + sum(e["details"].get("suppressed", 0) for e in entries) == total
