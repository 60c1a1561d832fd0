"""SSH keys over REST: generate (ed25519, RSA on request), import, the private half only on an
explicit, audited request, rename, default, delete; bad input and other organisations."""

from __future__ import annotations

import asyncssh

from tests.support.clouds import audit
from tests.support.controller import Controller


def test_keys_lifecycle(controller: Controller) -> None:
    h = controller.session()
    r = h.post("/api/v2/keys", {"name": "ops", "generate": True})
    assert r.status == 201, r.body
    ops = r.body["data"]
    assert ops["algorithm"] == "ssh-ed25519" and ops["public"].startswith("ssh-ed25519 ")
    assert ops["fingerprint"].startswith("SHA256:") and ops["default"] is True
    assert "private" not in ops and "BEGIN" not in str(r.body)
    # the private half: only when asked, and the asking is audited
    assert "BEGIN" not in str(h.get(f"/api/v2/keys/{ops['id']}").body)
    assert "BEGIN" not in str(h.get("/api/v2/keys").body)
    r = h.get(f"/api/v2/keys/{ops['id']}?private=true")
    private = r.body["data"]["private"]
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    k = asyncssh.import_private_key(private)
    assert k.export_public_key().decode().strip() == ops["public"]
    [entry] = audit(h, "key.private.read", ops["id"])
    assert entry["actor"]["email"] and "BEGIN" not in str(entry)
    assert "BEGIN" not in str(audit(h, "key.add"))
    # RSA on request; import an existing key; a dry run stores nothing
    r = h.post("/api/v2/keys", {"name": "legacy", "generate": True, "algorithm": "rsa", "bits": 2048})
    assert r.status == 201 and r.body["data"]["algorithm"] == "ssh-rsa" and r.body["data"]["bits"] == 2048
    assert r.body["data"]["default"] is False
    mine = asyncssh.generate_private_key("ssh-ed25519")
    r = h.post("/api/v2/keys", {"name": "imported", "private": mine.export_private_key().decode()})
    assert r.status == 201 and r.body["data"]["fingerprint"] == mine.get_fingerprint("sha256")
    imported = r.body["data"]
    total = h.get("/api/v2/keys").body["meta"]["total"]
    r = h.post("/api/v2/keys", {"generate": True, "dry": True})
    assert r.status == 200 and r.body["data"]["private"].startswith("-----BEGIN")
    assert h.get("/api/v2/keys").body["meta"]["total"] == total
    # rename, default moves, delete
    r = h.put(f"/api/v2/keys/{imported['id']}", {"name": "mine", "default": True})
    assert r.status == 200 and r.body["data"]["name"] == "mine" and r.body["data"]["default"]
    assert h.get(f"/api/v2/keys/{ops['id']}").body["data"]["default"] is False
    assert h.get("/api/v2/keys/mine").body["data"]["id"] == imported["id"]  # a name for the id
    assert h.delete(f"/api/v2/keys/{ops['id']}").status == 204
    assert h.get(f"/api/v2/keys/{ops['id']}").status == 404
    assert [e["outcome"] for e in audit(h, "key.delete", ops["id"])] == ["success"]


def test_bad_keys_are_refused_in_words(controller: Controller) -> None:
    h = controller.session()
    before = h.get("/api/v2/keys").body["meta"]["total"]
    for body, field in (
            ({"name": "x", "private": "not a key"}, "private"),
            ({"name": "x"}, "private"),
            ({"name": "x", "generate": True, "private": "y"}, "private"),
            ({"name": "x", "generate": True, "algorithm": "dsa"}, "algorithm"),
            ({"name": "x", "generate": True, "algorithm": "rsa", "bits": 1024}, "bits"),
            ({"generate": True}, "name")):
        r = h.post("/api/v2/keys", body)
        assert r.status == 422 and r.body["error"]["details"]["field"] == field, (body, r.body)
        assert "not a key" not in r.body["error"]["message"]
    r = h.post("/api/v2/keys", {"name": "dup", "generate": True})
    assert r.status == 201
    assert h.post("/api/v2/keys", {"name": "dup", "generate": True}).status == 409
    assert h.get("/api/v2/keys").body["meta"]["total"] == before + 1


def test_another_organisations_keys_are_not_found(controller: Controller) -> None:
    h = controller.session()
    kid = h.post("/api/v2/keys", {"name": "secret-one", "generate": True}).body["data"]["id"]
    controller.adduser("trudy@example.com", "correct horse battery", "--org", "Trudy")
    t = controller.session("trudy@example.com", "correct horse battery")
    assert t.get(f"/api/v2/keys/{kid}").status == 404
    assert t.get(f"/api/v2/keys/{kid}?private=true").status == 404
    assert t.put(f"/api/v2/keys/{kid}", {"name": "mine"}).status == 404
    assert t.delete(f"/api/v2/keys/{kid}").status == 404
    assert t.get("/api/v2/keys").body["meta"]["total"] == 0
    assert h.get(f"/api/v2/keys/{kid}").body["data"]["name"] == "secret-one"
