"""Organisations, members and users over REST: every resource belongs to one organisation and
another organisation's ids answer exactly like ids that do not exist (404, no hint, no data);
owners and members; the last owner stays; names are unique; users are made by admins only;
list conventions on the organisation list.

The module's controller has Acme (the admin, owner; bob, member) and Evil (eve, owner), and a
machine in each, written to the store before the controller starts (nothing in the REST API
makes machines)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest

from controller.machines.model import MACHINE
from controller.store import open_store
from controller.store.docs import dump
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, Response

EVE, EVE_PW = "eve@example.com", "eve's own password"
BOB, BOB_PW = "bob@example.com", "bob's own password"


def assert_error(r: Response, status: int, code: str | None = None,
                 field: str | None = None) -> dict[str, Any]:
    assert r.status == status, (r.status, r.body)
    assert isinstance(r.body, dict) and set(r.body) == {"error"}, r.body
    err = r.body["error"]
    assert set(err) == {"code", "message", "details"}, err
    if code is not None:
        assert err["code"] == code, err
    if field is not None:
        assert err["details"].get("field") == field, err
    assert b"Traceback" not in r.raw
    return err  # type: ignore[no-any-return]


@dataclass
class World:
    c: Controller
    admin: Http
    eve: Http
    bob: Http
    acme: str
    evil: str
    admin_id: str
    bob_id: str
    eve_id: str
    acme_machine: str
    evil_machine: str

    def audit(self, **params: str) -> list[dict[str, Any]]:
        r = self.admin.get("/api/v2/logs?" + urlencode({"allorgs": "true", "limit": "1000", **params}))
        assert r.status == 200, r.body
        return r.body["data"]  # type: ignore[no-any-return]


def _machine(org: str, mid: str, name: str) -> bytes:
    return dump(MACHINE, {"id": mid, "external_id": "ext-" + mid, "name": name, "cloud": "c1",
                          "state": "running", "org": org, "public_ips": ["198.51.100.7"]})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    c = Controller(tmp_path_factory.mktemp("orgs"))
    admin = c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    eve = c.adduser(EVE, EVE_PW, "--org", "Evil")
    bob = c.adduser(BOB, BOB_PW, "--org", "Acme")
    acme, evil = admin["org"]["id"], eve["org"]["id"]
    machines = {acme: uuid.uuid4().hex, evil: uuid.uuid4().hex}
    store = open_store(c.data_dir / "store")
    try:
        store.put(f"machine/{acme}/{machines[acme]}", _machine(acme, machines[acme], "acme-web"))
        store.put(f"machine/{evil}/{machines[evil]}", _machine(evil, machines[evil], "evil-box"))
    finally:
        store.close()
    c.start()
    yield World(c, c.session(), c.session(EVE, EVE_PW), c.session(BOB, BOB_PW), acme, evil,
                admin["user"]["id"], bob["user"]["id"], eve["user"]["id"], machines[acme],
                machines[evil])
    c.stop()


def names(r: Response) -> list[str]:
    assert r.status == 200, r.body
    return [o["name"] for o in r.body["data"]]


# ---- one organisation each ----------------------------------------------------------------

def test_each_user_sees_only_their_organisations(world: World) -> None:
    for q in ("", "?allorgs=true"):  # allorgs is for platform admins only
        assert names(world.eve.get("/api/v2/orgs" + q)) == ["Evil"]
    r = world.bob.get("/api/v2/orgs")
    assert names(r) == ["Acme"] and r.body["data"][0]["role"] == "member"
    r = world.admin.get("/api/v2/orgs")
    assert "Evil" not in names(r) and r.body["data"][0]["role"] == "owner"
    assert {"Acme", "Evil"} <= set(names(world.admin.get("/api/v2/orgs?allorgs=true")))
    r = world.eve.get("/api/v2/users")
    assert [u["email"] for u in r.body["data"]] == [EVE]
    assert r.body["meta"]["total"] == 1


def test_machines_are_seen_only_in_their_organisation(world: World) -> None:
    r = world.bob.get("/api/v2/machines")
    assert [m["name"] for m in r.body["data"]] == ["acme-web"]
    r = world.eve.get("/api/v2/machines")
    assert [m["name"] for m in r.body["data"]] == ["evil-box"]
    assert world.eve.get(f"/api/v2/machines/{world.evil_machine}").body["data"]["name"] == "evil-box"
    r = world.eve.get("/api/v2/machines?" + urlencode({"search": f"id:{world.acme_machine}"}))
    assert r.body["data"] == [] and r.body["meta"]["total"] == 0
    r = world.eve.get("/api/v2/machines?" + urlencode({"search": "acme-web"}))
    assert r.body["data"] == []
    # starting a page at another organisation's machine reads like starting at no machine
    theirs = world.eve.get(f"/api/v2/machines?start={world.acme_machine}")
    nobody = world.eve.get(f"/api/v2/machines?start={uuid.uuid4().hex}")
    assert theirs.status == nobody.status == 400
    assert theirs.body["error"]["details"] == nobody.body["error"]["details"] == {"field": "start"}
    assert b"acme-web" not in theirs.raw


def _cross_org_requests(w: World) -> list[tuple[str, str, Any, str]]:
    """(method, path, body, the same path with a made-up id in place of Acme's)."""
    tok = w.admin.post("/api/v2/auth/tokens", {"name": "admin-" + uuid.uuid4().hex[:6]}).body
    sid = next(s["id"] for s in w.admin.get("/api/v2/auth/sessions").body["data"] if s["current"])
    fake = uuid.uuid4().hex
    org = f"/api/v2/orgs/{w.acme}"
    other = f"/api/v2/orgs/{fake}"
    return [
        ("GET", org, None, other),
        ("GET", "/api/v2/orgs/Acme", None, "/api/v2/orgs/NoSuchOrg"),
        ("GET", "/api/v2/orgs/acme", None, "/api/v2/orgs/nosuchorg"),
        ("PATCH", org, {"name": "Pwned"}, other),
        ("PATCH", org, {"description": "pwned"}, other),
        ("GET", f"{org}/members", None, f"{other}/members"),
        ("POST", f"{org}/members", {"email": EVE, "role": "owner"}, f"{other}/members"),
        ("GET", f"{org}/members/{w.bob_id}", None, f"{other}/members/{w.bob_id}"),
        ("GET", f"{org}/members/{BOB}", None, f"{other}/members/{BOB}"),
        ("DELETE", f"{org}/members/{w.bob_id}", None, f"{other}/members/{w.bob_id}"),
        ("DELETE", f"{org}/members/{w.admin_id}", None, f"{other}/members/{w.admin_id}"),
        ("GET", f"/api/v2/orgs/{w.evil}/members/{w.bob_id}", None,
         f"/api/v2/orgs/{w.evil}/members/{fake}"),
        ("DELETE", f"/api/v2/auth/tokens/{tok['id']}", None, f"/api/v2/auth/tokens/{fake[:16]}"),
        ("DELETE", f"/api/v2/auth/sessions/{sid}", None, f"/api/v2/auth/sessions/{fake[:16]}"),
        ("GET", f"/api/v2/machines/{w.acme_machine}", None, f"/api/v2/machines/{fake}"),
    ]


def _acme_as_the_admin_sees_it(w: World) -> dict[str, Any]:
    return {
        "org": w.admin.get(f"/api/v2/orgs/{w.acme}").body,
        "members": w.admin.get(f"/api/v2/orgs/{w.acme}/members").body,
        "tokens": w.admin.get("/api/v2/auth/tokens").body,
        "sessions": w.admin.get("/api/v2/auth/sessions").body,
        "machine": w.admin.get(f"/api/v2/machines/{w.acme_machine}").body,
    }


def test_another_organisations_ids_answer_like_ids_that_do_not_exist(world: World) -> None:
    requests = _cross_org_requests(world)
    before = _acme_as_the_admin_sees_it(world)
    for method, path, body, nonexistent in requests:
        r = world.eve.request(method, path, body)
        ref = world.eve.request(method, nonexistent, body)
        err = assert_error(r, 404, "not_found")
        assert ref.status == 404
        assert err["message"] == ref.body["error"]["message"], (path, err, ref.body)
        assert set(err["details"]) == set(ref.body["error"]["details"])
        for secret in (b"acme-web", BOB.encode(), ADMIN_EMAIL.encode(), b'"role"', b"owner"):
            assert secret not in r.raw, (path, r.raw)
    # and nothing of Acme changed; the admin's session and token still work
    after = _acme_as_the_admin_sees_it(world)
    assert after == before
    assert all(not t["revoked"] for t in after["tokens"]["data"])


def test_a_member_is_also_a_stranger_to_other_organisations(world: World) -> None:
    assert_error(world.bob.get(f"/api/v2/orgs/{world.evil}"), 404, "not_found")
    assert_error(world.bob.get(f"/api/v2/orgs/{world.evil}/members"), 404, "not_found")
    assert_error(world.bob.get(f"/api/v2/machines/{world.evil_machine}"), 404, "not_found")
    # eve's password does not open a session in an organisation she is not in
    r = world.c.http().post("/api/v2/auth/sessions", {"email": EVE, "password": EVE_PW, "org": "Acme"})
    assert_error(r, 404, "not_found")


def test_the_audit_log_is_per_organisation(world: World) -> None:
    for q in ("", "&allorgs=true"):
        r = world.eve.get("/api/v2/logs?limit=1000" + q)
        assert r.status == 200 and r.body["data"]
        assert {e["org"] for e in r.body["data"]} == {world.evil}
        assert b"acme-web" not in r.raw and BOB.encode() not in r.raw
    r = world.bob.get("/api/v2/logs?limit=1000")
    assert {e["org"] for e in r.body["data"]} == {world.acme}


# ---- organisations ------------------------------------------------------------------------

def test_create_an_organisation_and_refuse_a_duplicate_name(world: World) -> None:
    name = "Gamma-" + uuid.uuid4().hex[:6]
    r = world.bob.post("/api/v2/orgs", {"name": name, "description": "third"})
    assert r.status == 201, r.body
    org = r.body
    assert org["name"] == name and org["role"] == "owner" and org["members_count"] == 1
    assert org["created_by"] == world.bob_id
    assert name in names(world.bob.get("/api/v2/orgs"))
    assert world.bob.get(f"/api/v2/orgs/{org['id']}").body["data"]["description"] == "third"
    assert world.bob.get(f"/api/v2/orgs/{name.lower()}").body["data"]["id"] == org["id"]
    created = [e for e in world.audit(action="org.create") if e["target"]["id"] == org["id"]]
    assert len(created) == 1 and created[0]["outcome"] == "success"
    assert created[0]["actor"]["email"] == BOB and created[0]["org"] == org["id"]

    count = len(world.admin.get("/api/v2/orgs?allorgs=true").body["data"])
    for dup in (name, name.upper(), f"  {name} ", "evil", "ACME"):
        for h in (world.eve, world.bob):
            assert_error(h.post("/api/v2/orgs", {"name": dup}), 409, "conflict", field="name")
    assert len(world.admin.get("/api/v2/orgs?allorgs=true").body["data"]) == count
    assert len([e for e in world.audit(action="org.create") if e["details"]["name"].lower()
                in (name.lower(), "evil", "acme")]) == 1


def test_owners_change_the_organisation_members_may_not(world: World) -> None:
    name = "Team-" + uuid.uuid4().hex[:6]
    org = world.admin.post("/api/v2/orgs", {"name": name}).body["id"]
    path = f"/api/v2/orgs/{org}"
    r = world.admin.post(f"{path}/members", {"email": BOB})
    assert r.status == 201 and r.body["role"] == "member" and r.body["email"] == BOB
    assert world.bob.get(path).body["data"]["role"] == "member"

    before = (world.admin.get(path).body, world.admin.get(f"{path}/members").body)
    err = assert_error(world.bob.patch(path, {"name": "Bobs"}), 403, "forbidden")
    assert "owner" in err["message"]
    assert_error(world.bob.patch(path, {"description": "mine"}), 403, "forbidden")
    assert_error(world.bob.post(f"{path}/members", {"email": EVE}), 403, "forbidden")
    assert_error(world.bob.post(f"{path}/members", {"email": EVE, "role": "owner"}), 403)
    assert_error(world.bob.delete(f"{path}/members/{world.admin_id}"), 403, "forbidden")
    assert (world.admin.get(path).body, world.admin.get(f"{path}/members").body) == before
    denied = [e for e in world.audit(outcome="denied") if e["org"] == org]
    assert {e["action"] for e in denied} == {"org.update", "member.add", "member.remove"}
    assert len(denied) == 5 and all(e["actor"]["email"] == BOB for e in denied)
    assert not [e for e in world.audit(outcome="success", action="org.update") if e["org"] == org]

    # the owner can
    r = world.admin.patch(path, {"name": name + "-renamed", "description": "ours"})
    assert r.status == 200 and r.body["data"]["name"] == name + "-renamed"
    assert world.bob.get(f"/api/v2/orgs/{name}-renamed").body["data"]["description"] == "ours"
    assert_error(world.bob.get(f"/api/v2/orgs/{name}"), 404, "not_found")  # the old name is free
    assert_error(world.admin.patch(path, {"name": "Acme"}), 409, "conflict", field="name")
    assert world.admin.get(path).body["data"]["name"] == name + "-renamed"
    updated = [e for e in world.audit(action="org.update", outcome="success") if e["org"] == org]
    assert len(updated) == 1 and updated[0]["actor"]["email"] == ADMIN_EMAIL
    assert world.admin.post(f"{path}/members", {"email": EVE, "role": "owner"}).status == 201
    assert_error(world.admin.post(f"{path}/members", {"email": EVE}), 409, "conflict", field="email")


def test_members_are_listed_shown_and_removed(world: World) -> None:
    org = world.admin.post("/api/v2/orgs", {"name": "Crew-" + uuid.uuid4().hex[:6]}).body["id"]
    path = f"/api/v2/orgs/{org}/members"
    assert world.admin.post(path, {"email": BOB}).status == 201
    r = world.admin.get(path + "?sort=email")
    assert [(m["email"], m["role"]) for m in r.body["data"]] == [(ADMIN_EMAIL, "owner"), (BOB, "member")]
    assert r.body["meta"]["total"] == 2
    assert world.admin.get(path + "?search=bob&only=email").body["data"] == [
        {"id": world.bob_id, "email": BOB}]
    by_id = world.bob.get(f"{path}/{world.bob_id}").body["data"]
    by_email = world.bob.get(f"{path}/{BOB}").body["data"]
    assert by_id == by_email and by_id["role"] == "member" and "_pw" not in by_id
    assert_error(world.admin.get(f"{path}/{world.eve_id}"), 404, "not_found")  # not a member

    # a member may leave
    assert world.bob.delete(f"{path}/{world.bob_id}").status == 204
    assert_error(world.bob.get(f"/api/v2/orgs/{org}"), 404, "not_found")
    assert [m["email"] for m in world.admin.get(path).body["data"]] == [ADMIN_EMAIL]
    removed = [e for e in world.audit(action="member.remove") if e["org"] == org]
    assert len(removed) == 1 and removed[0]["target"] == {"kind": "user", "id": world.bob_id}
    assert_error(world.admin.delete(f"{path}/{world.bob_id}"), 404, "not_found")


def test_the_last_owner_stays(world: World) -> None:
    org = world.admin.post("/api/v2/orgs", {"name": "Solo-" + uuid.uuid4().hex[:6]}).body["id"]
    path = f"/api/v2/orgs/{org}/members"
    err = assert_error(world.admin.delete(f"{path}/{world.admin_id}"), 409, "conflict")
    assert "owner" in err["message"]
    assert [m["email"] for m in world.admin.get(path).body["data"]] == [ADMIN_EMAIL]
    # with a second owner, the first may go; then the second is the last
    assert world.admin.post(path, {"email": EVE, "role": "owner"}).status == 201
    assert world.admin.delete(f"{path}/{ADMIN_EMAIL}").status == 204
    assert_error(world.eve.delete(f"{path}/{world.eve_id}"), 409, "conflict")
    r = world.eve.get(path)
    assert [(m["email"], m["role"]) for m in r.body["data"]] == [(EVE, "owner")]
    assert not [e for e in world.audit(action="member.remove", outcome="success")
                if e["org"] == org and e["target"]["id"] == world.eve_id]


# ---- users --------------------------------------------------------------------------------

def test_only_platform_admins_create_users(world: World) -> None:
    email = f"new-{uuid.uuid4().hex[:6]}@example.com"
    password = "pw-" + uuid.uuid4().hex
    for h in (world.eve, world.bob):
        err = assert_error(h.post("/api/v2/users", {"email": email, "password": password}),
                           403, "forbidden")
        assert "admin" in err["message"]
    assert email not in [u["email"] for u in world.admin.get("/api/v2/users?limit=1000").body["data"]]
    denied = world.audit(action="user.create", outcome="denied")
    assert {e["actor"]["email"] for e in denied[:2]} == {EVE, BOB}

    r = world.admin.post("/api/v2/users", {"email": email, "password": password, "org": "Newco",
                                           "first_name": "New"})
    assert r.status == 201, r.body
    assert r.body["email"] == email and r.body["org"]["name"] == "Newco"
    assert "_pw" not in r.body and password not in r.raw.decode()
    listed = world.admin.get("/api/v2/users?" + urlencode({"search": f"email:{email}"})).body
    assert listed["meta"]["total"] == 1 and listed["data"][0]["first_name"] == "New"
    newbie = world.c.session(email, password)
    orgs = newbie.get("/api/v2/orgs").body["data"]
    assert [(o["name"], o["role"]) for o in orgs] == [("Newco", "owner")]
    created = [e for e in world.audit(action="user.create", outcome="success")
               if e["details"].get("email") == email]
    assert len(created) == 1 and created[0]["actor"]["email"] == ADMIN_EMAIL
    raw = world.admin.get("/api/v2/logs?allorgs=true&limit=1000").raw
    for pw in (password, EVE_PW, BOB_PW, ADMIN_PASSWORD):
        assert pw.encode() not in raw
    assert_error(world.admin.post("/api/v2/users", {"email": email.upper(), "password": password}),
                 409, "conflict", field="email")


# ---- list conventions ---------------------------------------------------------------------

def test_organisation_list_search_sort_page_and_only(world: World) -> None:
    tag = uuid.uuid4().hex[:6]
    made = {n: world.eve.post("/api/v2/orgs", {"name": f"L{tag}-{n}"}).body for n in ("b", "a", "c")}
    assert all(o.get("id") for o in made.values()), made
    r = world.eve.get(f"/api/v2/orgs?search=L{tag}&sort=name")
    assert set(r.body) == {"data", "meta"}
    assert names(r) == [f"L{tag}-a", f"L{tag}-b", f"L{tag}-c"]
    assert r.body["meta"] == {"total": 3, "returned": 3, "sort": "name", "start": 0}
    r = world.eve.get(f"/api/v2/orgs?search=L{tag}&sort=-name&limit=2&start=1")
    assert names(r) == [f"L{tag}-b", f"L{tag}-a"]
    assert r.body["meta"] == {"total": 3, "returned": 2, "sort": "-name", "start": 1}
    r = world.eve.get(f"/api/v2/orgs?search=L{tag}&sort=name&start={made['c']['id']}")
    assert names(r) == [f"L{tag}-c"] and r.body["meta"]["start"] == 2
    r = world.eve.get("/api/v2/orgs?" + urlencode({"sort": "name", "only": "name,role",
                                                   "search": f"role:owner L{tag}"}))
    assert r.body["data"][0] == {"id": made["a"]["id"], "name": f"L{tag}-a", "role": "owner"}
    r = world.eve.get("/api/v2/orgs?" + urlencode({"search": f"name:L{tag}-a OR name:Evil",
                                                   "sort": "-name"}))
    assert names(r) == [f"L{tag}-a", "Evil"]
    r = world.eve.get("/api/v2/orgs?search=name!=Evil&limit=100")
    assert "Evil" not in names(r) and f"L{tag}-a" in names(r)
    assert names(world.bob.get(f"/api/v2/orgs?search=L{tag}")) == []  # eve's, not bob's
    assert_error(world.eve.get("/api/v2/orgs?limit=0"), 400, "bad_request", field="limit")
    assert_error(world.eve.get("/api/v2/orgs?limit=101"), 400, "bad_request", field="limit")
