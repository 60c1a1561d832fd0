"""Signing in and API tokens over REST, as a browser and a script see them: the session
cookie and its CSRF protection, sign-out, throttled failed logins, tokens (Bearer and Mist's
bare header, expiry, revocation, shown once, stored hashed) and the audit entries of all that.

The module's controller counts failed logins per address (5 in 300 s, and every test talks
from 127.0.0.1): tests here make at most three failed logins on it; throttling itself runs
on a fresh controller."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, Response

SESSIONS = "/api/v2/auth/sessions"
TOKENS = "/api/v2/auth/tokens"


# ---- helpers ------------------------------------------------------------------------------

def assert_error(r: Response, status: int, code: str | None = None,
                 field: str | None = None) -> dict[str, Any]:
    """The one error shape, with no internals in it."""
    assert r.status == status, (r.status, r.body)
    assert isinstance(r.body, dict) and set(r.body) == {"error"}, r.body
    err = r.body["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], dict)
    if code is not None:
        assert err["code"] == code, err
    if field is not None:
        assert err["details"].get("field") == field, err
    assert b"Traceback" not in r.raw and b'File "' not in r.raw
    return err  # type: ignore[no-any-return]


def audit(admin: Http, **params: str) -> list[dict[str, Any]]:
    """Audit entries of every organisation (the admin is a platform admin), newest first."""
    r = admin.get("/api/v2/logs?" + urlencode({"allorgs": "true", "limit": "1000", **params}))
    assert r.status == 200, r.body
    return r.body["data"]  # type: ignore[no-any-return]


def audit_raw(admin: Http) -> bytes:
    r = admin.get("/api/v2/logs?allorgs=true&limit=1000")
    assert r.status == 200, r.body
    return r.raw


def set_cookies(url: str, body: dict[str, Any], context: ssl.SSLContext | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """POST a login and return (status, {cookie name: its whole Set-Cookie line}, body):
    the test client keeps only cookie values, these tests look at the attributes."""
    req = urllib.request.Request(url + SESSIONS, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            status, lines, payload = resp.status, resp.headers.get_all("Set-Cookie") or [], resp.read()
    except urllib.error.HTTPError as exc:
        status, lines, payload = exc.code, exc.headers.get_all("Set-Cookie") or [], exc.read()
    cookies = {line.split("=", 1)[0]: line for line in lines}
    return status, cookies, json.loads(payload)


def attrs(line: str) -> set[str]:
    """The attributes of a Set-Cookie line, lower-cased (``httponly``, ``samesite=lax``...)."""
    return {a.strip().lower() for a in line.split(";")[1:]}


def value(line: str) -> str:
    return line.split(";", 1)[0].split("=", 1)[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_token(h: Http, name: str, **extra: Any) -> dict[str, Any]:
    r = h.post(TOKENS, {"name": name, **extra})
    assert r.status == 201, r.body
    return r.body  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def admin(controller: Controller) -> Http:
    return controller.session()


def _own_controller(tmp: Path, env: dict[str, str]) -> Controller:
    c = Controller(tmp, env)
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    return c.start()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Controller]:
    """A controller behind a TLS-terminating reverse proxy (which these tests play)."""
    c = _own_controller(tmp_path, {"OVERCAST_BEHIND_PROXY": "true",
                                   "OVERCAST_EXTERNAL_URL": "https://overcast.example.test",
                                   "OVERCAST_CHECK_EXTERNAL_URL": "false"})
    yield c
    c.stop()


# ---- sessions -----------------------------------------------------------------------------

def test_login_sets_an_httponly_samesite_cookie_and_hands_out_the_csrf_token(
        controller: Controller) -> None:
    status, cookies, body = set_cookies(controller.url,
                                        {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert status == 200, body
    session = cookies["session.id"]
    a = attrs(session)
    assert "httponly" in a and "samesite=lax" in a and "path=/" in a
    assert "secure" not in a  # plain HTTP on loopback: a Secure cookie would never come back
    assert len(value(session)) >= 32
    # the session secret lives in the cookie only, never in the body
    assert value(session) not in json.dumps(body)
    csrf = body["data"]["csrf_token"]
    assert csrf and value(cookies["csrf_token"]) == csrf
    assert "httponly" not in attrs(cookies["csrf_token"])  # the web UI reads it
    assert body["data"]["user"]["email"] == ADMIN_EMAIL
    assert body["data"]["auth"] == "session"
    assert "_pw" not in json.dumps(body) and ADMIN_PASSWORD not in json.dumps(body)

    h = controller.http()
    h.cookies["session.id"] = value(session)
    r = h.get("/api/v2/auth")  # reading needs no CSRF header
    assert r.status == 200 and r.body["data"]["org"]["name"] == "Acme"


def test_session_cookie_is_secure_under_tls(tmp_path: Path) -> None:
    c = _own_controller(tmp_path, {"OVERCAST_TLS": "on"})
    try:
        ctx = ssl.create_default_context(cafile=str(c.data_dir / "pki" / "ca.crt"))
        url = f"https://127.0.0.1:{c.http_port}"
        status, cookies, body = set_cookies(url, {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                                            context=ctx)
        assert status == 200, body
        for name in ("session.id", "csrf_token"):
            assert "secure" in attrs(cookies[name]), cookies[name]
        assert "httponly" in attrs(cookies["session.id"])
    finally:
        c.stop()


def test_behind_a_tls_proxy_cookie_is_secure_and_audit_has_the_proxys_client_address(
        proxied: Controller) -> None:
    # A client may send its own X-Forwarded-For; the proxy appends the address it saw.
    status, cookies, body = set_cookies(
        proxied.url, {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
        headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7"})
    assert status == 200, body
    assert "secure" in attrs(cookies["session.id"])
    admin = proxied.session()
    logins = audit(admin, action="session.create", outcome="success")
    assert logins[-1]["source"]["ip"] == "203.0.113.7", logins[-1]
    assert all(e["source"]["ip"] != "6.6.6.6" for e in logins)


def test_x_forwarded_for_is_ignored_without_a_proxy(controller: Controller, admin: Http) -> None:
    h = controller.http()
    r = h.post(SESSIONS, {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
               headers={"X-Forwarded-For": "6.6.6.6"})
    assert r.status == 200
    newest = audit(admin, action="session.create", outcome="success")[0]
    assert newest["source"] == {"ip": "127.0.0.1", "via": "rest"}


def test_cookie_sessions_need_the_csrf_header_to_change_anything(
        controller: Controller, admin: Http) -> None:
    good = controller.session()
    name = unique("csrf")
    for csrf in (None, "not-the-token", ""):
        h = Http(controller.url, cookies=dict(good.cookies), csrf=csrf)
        err = assert_error(h.post(TOKENS, {"name": name}), 403, "forbidden")
        assert "X-CSRF-Token" in err["message"]
        # signing out is a change too
        assert_error(h.delete(SESSIONS), 403, "forbidden")
    # nothing was made, the session still works, and every refusal is in the audit
    listed = good.get(TOKENS + "?" + urlencode({"search": f"name:{name}"}))
    assert listed.status == 200 and listed.body["data"] == []
    assert good.get("/api/v2/auth").status == 200
    refused = [e for e in audit(admin, action="auth.csrf")
               if e["details"].get("path") == TOKENS and e["outcome"] == "denied"]
    assert len(refused) >= 3
    assert refused[0]["actor"]["email"] == ADMIN_EMAIL and refused[0]["actor"]["kind"] == "user"
    assert refused[0]["source"] == {"ip": "127.0.0.1", "via": "rest"}
    assert not [e for e in audit(admin, action="token.create")
                if e["details"].get("token_name") == name]
    # with the header it works; an API token needs no CSRF header at all
    assert good.post(TOKENS, {"name": name}).status == 201
    token = controller.http(controller.token(name=unique("nocsrf")))
    assert token.post(TOKENS, {"name": unique("bytoken")}).status == 201


def test_sign_out_ends_the_session(controller: Controller, admin: Http) -> None:
    h = controller.session()
    cookie = h.cookies["session.id"]
    sid = next(s["id"] for s in h.get(SESSIONS).body["data"] if s["current"])
    r = h.delete(SESSIONS)
    assert r.status == 204
    assert "session.id" not in h.cookies  # the response told the browser to drop it
    # the old cookie is dead, even if a client kept it
    stale = Http(controller.url, cookies={"session.id": cookie}, csrf=h.csrf)
    err = assert_error(stale.get("/api/v2/auth"), 401, "unauthenticated")
    assert "sign in" in err["message"]
    assert_error(stale.post(TOKENS, {"name": unique("stale")}), 401)
    assert sid not in [s["id"] for s in admin.get(SESSIONS).body["data"]]
    ended = audit(admin, action="session.delete")
    assert any(e["target"] == {"kind": "session", "id": sid} and e["outcome"] == "success"
               and e["actor"]["email"] == ADMIN_EMAIL for e in ended)
    assert audit(admin, action="auth.refused")[0]["target"]["kind"] == "session"


def test_sign_out_with_a_token_is_refused(controller: Controller) -> None:
    h = controller.http(controller.token(name=unique("signout")))
    assert_error(h.delete(SESSIONS), 422, field="session")
    assert h.get("/api/v2/auth").status == 200


def test_wrong_password_and_unknown_user_are_refused_alike_and_audited(
        controller: Controller, admin: Http) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    answers = []
    for email in (ADMIN_EMAIL, "nobody-" + uuid.uuid4().hex[:6] + "@example.com"):
        h = controller.http()
        r = h.post(SESSIONS, {"email": email, "password": wrong})
        answers.append(assert_error(r, 401, "unauthenticated"))
        assert "session.id" not in h.cookies
    # the same answer whether the account exists or not
    assert answers[0] == answers[1]
    assert answers[0]["message"] == "wrong e-mail or password"
    denied = audit(admin, action="session.create", outcome="denied")
    mine = [e for e in denied if e["actor"].get("email") == ADMIN_EMAIL]
    assert mine and mine[0]["actor"]["kind"] == "anonymous"
    assert mine[0]["source"] == {"ip": "127.0.0.1", "via": "rest"}
    assert mine[0]["target"]["kind"] == "user" and mine[0]["target"]["id"]
    raw = audit_raw(admin)
    assert wrong.encode() not in raw and ADMIN_PASSWORD.encode() not in raw


def test_failed_logins_are_throttled_with_retry_after(fresh_controller: Controller) -> None:
    c = fresh_controller
    c.adduser("victim@example.com", "the right password", "--org", "Victims")
    admin = Http(c.url, c.token())  # before: this address is throttled afterwards
    h = c.http()
    for _ in range(5):
        assert_error(h.post(SESSIONS, {"email": "victim@example.com", "password": "guess"}), 401)
    r = h.post(SESSIONS, {"email": "victim@example.com", "password": "guess"})
    err = assert_error(r, 429, "rate_limited")
    retry = int(r.headers["Retry-After"])
    assert 0 < retry <= 300
    assert err["details"]["retry_after"] == retry
    # locked means locked: the right password does not get through either
    r = h.post(SESSIONS, {"email": "victim@example.com", "password": "the right password"})
    assert_error(r, 429, "rate_limited")
    assert "session.id" not in h.cookies
    denied = [e for e in audit(admin, action="session.create", outcome="denied")
              if e["actor"].get("email") == "victim@example.com"]
    assert len(denied) == 7  # five wrong passwords and two throttled attempts
    assert sum("too many" in e["details"]["reason"] for e in denied) == 2
    assert not [e for e in audit(admin, action="session.create", outcome="success")
                if e["actor"].get("email") == "victim@example.com"]
    assert b"the right password" not in audit_raw(admin)


# ---- API tokens ---------------------------------------------------------------------------

def test_token_is_shown_once_and_works_as_bearer_and_bare(
        controller: Controller, admin: Http) -> None:
    name = unique("ci")
    tok = new_token(admin, name, ttl=3600)
    secret = tok["token"]
    assert secret.startswith("oc_") and len(secret) > 30
    assert tok["name"] == name and tok["ttl"] == 3600 and tok["expires"] and not tok["revoked"]
    for header in (f"Bearer {secret}", secret, f"bearer {secret}", f"  Bearer   {secret} "):
        r = controller.http().get("/api/v2/auth", headers={"Authorization": header})
        assert r.status == 200, (header, r.body)
        assert r.body["data"]["auth"] == "token"
        assert r.body["data"]["user"]["email"] == ADMIN_EMAIL
    listed = admin.get(TOKENS)
    assert listed.status == 200
    mine = [t for t in listed.body["data"] if t["id"] == tok["id"]]
    assert len(mine) == 1 and mine[0]["name"] == name and "token" not in mine[0]
    assert secret.encode() not in listed.raw and secret[8:].encode() not in listed.raw
    created = [e for e in audit(admin, action="token.create") if e["target"]["id"] == tok["id"]]
    assert len(created) == 1 and created[0]["outcome"] == "success"
    assert created[0]["actor"]["email"] == ADMIN_EMAIL
    assert secret.encode() not in audit_raw(admin)


def test_missing_and_unknown_tokens_are_refused_and_audited(
        controller: Controller, admin: Http) -> None:
    r = controller.http().get(TOKENS)
    err = assert_error(r, 401, "unauthenticated")
    assert "Bearer" in err["message"]
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    before = len(audit(admin, action="auth.refused"))
    bogus = "oc_" + uuid.uuid4().hex
    for h in (controller.http(bogus), controller.http(bogus, bare=True)):
        err = assert_error(h.get(TOKENS), 401, "unauthenticated")
        assert "not valid" in err["message"]
        assert_error(h.post(TOKENS, {"name": unique("nope")}), 401)
    refused = audit(admin, action="auth.refused")
    assert len(refused) == before + 4
    assert refused[0]["outcome"] == "denied" and refused[0]["target"]["kind"] == "token"
    assert refused[0]["source"] == {"ip": "127.0.0.1", "via": "rest"}
    assert bogus.encode() not in audit_raw(admin)


def test_revoked_token_is_refused(controller: Controller, admin: Http) -> None:
    tok = new_token(admin, unique("revoke"))
    user = controller.http(tok["token"])
    assert user.get("/api/v2/auth").status == 200
    r = admin.delete(f"{TOKENS}/{tok['id']}")
    assert r.status == 200 and r.body["revoked"] is True
    for h in (user, controller.http(tok["token"], bare=True)):
        err = assert_error(h.get("/api/v2/auth"), 401, "unauthenticated")
        assert "revoked" in err["message"]
    listed = [t for t in admin.get(TOKENS).body["data"] if t["id"] == tok["id"]]
    assert listed[0]["revoked"] is True
    revoked = [e for e in audit(admin, action="token.revoke") if e["target"]["id"] == tok["id"]]
    assert len(revoked) == 1 and revoked[0]["outcome"] == "success"
    # the refusal is entered in the token's own organisation, naming the token
    refusals = [e for e in audit(admin, action="auth.refused") if e["target"]["id"] == tok["id"]]
    assert refusals and "revoked" in refusals[0]["details"]["reason"]
    assert refusals[0]["org"] == admin.get("/api/v2/auth").body["data"]["org"]["id"]
    # revoking again changes nothing; an unknown id is 404
    assert admin.delete(f"{TOKENS}/{tok['id']}").status == 200
    assert len([e for e in audit(admin, action="token.revoke") if e["target"]["id"] == tok["id"]]) == 1
    assert_error(admin.delete(f"{TOKENS}/{uuid.uuid4().hex[:16]}"), 404, "not_found")


def test_expired_token_is_refused_with_a_reason(controller: Controller, admin: Http) -> None:
    tok = new_token(admin, unique("short"), ttl=1)
    h = controller.http(tok["token"])
    assert h.get("/api/v2/auth").status == 200
    time.sleep(2.1)
    err = assert_error(h.get("/api/v2/auth"), 401, "unauthenticated")
    assert "expired" in err["message"]
    assert_error(controller.http(tok["token"], bare=True).get(TOKENS), 401)
    listed = [t for t in admin.get(TOKENS).body["data"] if t["id"] == tok["id"]]
    assert listed[0]["expired"] is True
    assert "expired" in audit(admin, action="auth.refused")[0]["details"]["reason"]


def test_token_list_search_sort_page_and_only(admin: Http) -> None:
    tag = uuid.uuid4().hex[:8]
    made = {n: new_token(admin, f"lst{tag}-{n}") for n in ("b", "c", "a")}
    q = f"{TOKENS}?search=lst{tag}"
    r = admin.get(q)
    assert r.status == 200 and set(r.body) == {"data", "meta"}
    assert r.body["meta"] == {"total": 3, "returned": 3, "sort": "", "start": 0}

    r = admin.get(q + "&sort=-name&limit=2")
    assert [t["name"] for t in r.body["data"]] == [f"lst{tag}-c", f"lst{tag}-b"]
    assert r.body["meta"] == {"total": 3, "returned": 2, "sort": "-name", "start": 0}
    r = admin.get(q + "&sort=-name&limit=2&start=2")
    assert [t["name"] for t in r.body["data"]] == [f"lst{tag}-a"]
    r = admin.get(q + f"&sort=name&start={made['b']['id']}")  # start at an id
    assert [t["name"] for t in r.body["data"]] == [f"lst{tag}-b", f"lst{tag}-c"]
    assert r.body["meta"]["start"] == 1

    r = admin.get(q + "&only=name&sort=name")
    assert r.body["data"] == [{"id": made[n]["id"], "name": f"lst{tag}-{n}"} for n in "abc"]
    r = admin.get(f"{TOKENS}?" + urlencode({"search": f"name:lst{tag}-a OR name:lst{tag}-c",
                                            "sort": "name"}))
    assert [t["id"] for t in r.body["data"]] == [made["a"]["id"], made["c"]["id"]]
    assert admin.get(f"{TOKENS}?search=nothing-has-{tag}").body["meta"]["total"] == 0


def test_tokens_and_passwords_are_stored_hashed(fresh_controller: Controller) -> None:
    c = fresh_controller
    name = "marker-" + uuid.uuid4().hex  # stored in clear: proves the search below sees data
    h = c.session()
    cookie = h.cookies["session.id"]
    tok = new_token(h, name)
    secret = tok["token"]
    assert c.http(secret).get("/api/v2/auth").status == 200
    assert c.http(secret, bare=True).get(TOKENS).status == 200
    assert c.stop() == 0

    blobs = [p.read_bytes() for p in c.data_dir.rglob("*") if p.is_file()]
    # the store's files are compressed: search its decoded contents too
    from controller.store import open_store

    store = open_store(c.data_dir / "store", "ro")
    try:
        blobs.append(b"\n".join(k.encode() + b"=" + v for k, v in store.scan("")))
    finally:
        store.close()
    assert any(name.encode() in b for b in blobs), "the search does not see the store's data"
    for needle in (secret, secret[7:], cookie, ADMIN_PASSWORD):
        assert not any(needle.encode() in b for b in blobs), f"{needle[:6]}... stored in clear"
    log = c.log_path.read_bytes()
    for needle in (secret, cookie, ADMIN_PASSWORD):
        assert needle.encode() not in log
