"""The script library over REST against a real controller and a real git/file server on
loopback: inline, URL (a .tar.gz or one file) and git scripts (at a branch, tag or commit),
executables and Ansible playbooks; list, show, edit (Mist's query form and JSON), download,
refresh, delete; bad input refused in words with nothing stored; other organisations; the
local-address policy; and an audit log that never holds a script's content."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clouds import audit
from tests.support.controller import Controller, Http
from tests.support.gitserver import GitServer

RUN = "#!/bin/sh\necho script-body-marker\n"
PLAY = "- hosts: all\n  tasks:\n    - ping:\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with GitServer(tmp_path_factory.mktemp("gitserver")) as s:
        yield s


def tgz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(text.encode()), 0o755
            tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def add(h: Http, name: str, script: str, location_type: str = "inline", **extra: Any) -> dict[str, Any]:
    r = h.post("/api/v2/scripts", {"name": name, "exec_type": "executable",
                                   "location_type": location_type, "script": script, **extra})
    assert r.status == 201, r.body
    assert r.body["id"] == r.body["data"]["id"]
    return r.body["data"]  # type: ignore[no-any-return]


def total(h: Http) -> int:
    return int(h.get("/api/v2/scripts").body["meta"]["total"])


def test_inline_script_lifecycle(controller: Controller) -> None:
    h = controller.session()
    s = add(h, "hello", RUN, description="says hello", tags={"team": "ops"})
    assert s["sha256"] == hashlib.sha256(RUN.encode()).hexdigest() and s["size"] == len(RUN)
    assert {k: s[k] for k in ("name", "description", "exec_type", "location_type", "entrypoint",
                              "source", "ref", "commit", "tags")} == {
        "name": "hello", "description": "says hello", "exec_type": "executable",
        "location_type": "inline", "entrypoint": "", "source": "", "ref": "", "commit": "",
        "tags": {"team": "ops"}}
    assert s["created_by"] == s["owned_by"] == "admin@example.com" and s["created"] and s["fetched"]
    listed = h.get("/api/v2/scripts?search=hello")
    assert [x["id"] for x in listed.body["data"]] == [s["id"]]
    assert "script-body-marker" not in str(listed.body) and "script-body-marker" not in str(s)
    assert h.get("/api/v2/scripts/hello").body["data"]["id"] == s["id"]  # a name for the id
    assert h.get(f"/api/v2/scripts/{s['id']}?only=name").body["data"] == {"id": s["id"], "name": "hello"}
    r = h.get("/api/v2/scripts/hello/file")
    assert r.status == 200 and r.raw == RUN.encode()
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.headers["Content-Disposition"] == 'attachment; filename="hello.sh"'
    # Mist passes name and description as query parameters; JSON works too
    r = h.put(f"/api/v2/scripts/{s['id']}?name=greet&description=new%20words")
    assert r.status == 200 and r.body["data"]["name"] == "greet"
    assert r.body["data"]["description"] == "new words"
    r = h.put("/api/v2/scripts/greet", {"description": ""})
    assert r.status == 200 and r.body["data"]["description"] == ""
    assert r.body["data"]["sha256"] == s["sha256"]
    assert h.post("/api/v2/scripts/greet/refresh").status == 422  # nothing to fetch again
    assert h.delete("/api/v2/scripts/greet").status == 204
    assert h.get(f"/api/v2/scripts/{s['id']}").status == 404
    assert h.get(f"/api/v2/scripts/{s['id']}/file").status == 404
    actions = [e["action"] for e in audit(h, "script.add", s["id"]) + audit(h, "script.edit", s["id"])
               + audit(h, "script.delete", s["id"])]
    assert actions.count("script.edit") == 2 and "script.add" in actions and "script.delete" in actions
    [entry] = audit(h, "script.add", s["id"])
    assert entry["details"]["sha256"] == s["sha256"] and entry["actor"]["email"]
    assert "script-body-marker" not in str(h.get("/api/v2/logs?limit=1000").body)


def test_url_scripts_are_archives_or_single_files(controller: Controller, srv: GitServer) -> None:
    h = controller.session()
    archive = tgz({"tool/run.sh": RUN, "tool/lib.sh": "x=1\n"})
    url = srv.add_file("/dl/tool.tar.gz", archive, "application/gzip")
    s = add(h, "tool", url, "url", entrypoint="./tool/run.sh")
    assert s["entrypoint"] == "tool/run.sh" and s["source"] == url and s["size"] == len(archive)
    assert s["sha256"] == hashlib.sha256(archive).hexdigest()
    r = h.get("/api/v2/scripts/tool/file")
    assert r.raw == archive and r.headers["Content-Type"] == "application/gzip"
    assert r.headers["Content-Disposition"] == 'attachment; filename="tool.tar.gz"'
    one = srv.add_file("/dl/one.sh", RUN.encode())
    s = add(h, "one", one, "url")
    assert s["entrypoint"] == "" and h.get("/api/v2/scripts/one/file").raw == RUN.encode()
    # a redirect is followed (each hop through the local-address policy)
    s = add(h, "moved", srv.redirect("/old/one.sh", one), "url")
    assert s["sha256"] == hashlib.sha256(RUN.encode()).hexdigest()


def test_git_scripts_at_a_ref_and_refresh(controller: Controller, srv: GitServer) -> None:
    h = controller.session()
    url = srv.add_repo("deploy", {"bin/deploy.sh": RUN, "README": "docs\n"},
                       executable=("bin/deploy.sh",))
    first = srv.head("deploy")
    srv.tag("deploy", "v1")
    dev = srv.commit("deploy", {"bin/deploy.sh": "#!/bin/sh\necho dev\n"}, branch="dev")
    s = add(h, "deploy", url, "git", entrypoint="bin/deploy.sh")
    assert s["commit"] == first and s["ref"] == "" and s["source"] == url
    with tarfile.open(fileobj=io.BytesIO(h.get("/api/v2/scripts/deploy/file").raw)) as tar:
        assert tar.extractfile("bin/deploy.sh").read() == RUN.encode()  # type: ignore[union-attr]
        assert tar.getmember("bin/deploy.sh").mode == 0o755 and ".git" not in tar.getnames()
    at_dev = add(h, "deploy-dev", f"{url}#dev", "github", entrypoint="bin/deploy.sh")
    assert at_dev["commit"] == dev and at_dev["ref"] == "dev" and at_dev["location_type"] == "github"
    at_tag = add(h, "deploy-v1", f"{url}#v1", "git", entrypoint="bin/deploy.sh")
    assert at_tag["commit"] == first and at_tag["sha256"] == s["sha256"]  # packed the same way
    at_commit = add(h, "deploy-at", f"{url}#{dev}", "git", entrypoint="bin/deploy.sh")
    assert at_commit["commit"] == dev and at_commit["sha256"] == at_dev["sha256"]
    # refresh: a new commit on main is picked up; the same commit changes nothing
    second = srv.commit("deploy", {"bin/deploy.sh": "#!/bin/sh\necho v2\n"})
    old = h.get("/api/v2/scripts/deploy/file").raw  # still the reviewed snapshot, until refresh
    assert hashlib.sha256(old).hexdigest() == s["sha256"]
    r = h.post("/api/v2/scripts/deploy/refresh")
    assert r.status == 200 and r.body["changed"] is True and r.body["data"]["commit"] == second
    new = r.body["data"]
    data = h.get("/api/v2/scripts/deploy/file").raw
    assert hashlib.sha256(data).hexdigest() == new["sha256"] != s["sha256"]
    r = h.post("/api/v2/scripts/deploy/refresh")
    assert r.body["changed"] is False and r.body["data"]["sha256"] == new["sha256"]
    assert h.post("/api/v2/scripts/deploy-dev/refresh").body["changed"] is False  # dev unchanged
    entries = audit(h, "script.refresh", s["id"])
    assert sorted(e["details"]["changed"] for e in entries) == [False, True]
    assert {e["details"]["commit"]["to"] for e in entries} == {second}


def test_ansible_playbooks(controller: Controller, srv: GitServer) -> None:
    h = controller.session()
    s = add(h, "ping", PLAY, exec_type="ansible")
    assert s["exec_type"] == "ansible"
    r = h.get("/api/v2/scripts/ping/file")
    assert r.raw == PLAY.encode() and r.headers["Content-Disposition"].endswith('filename="ping.yml"')
    url = srv.add_repo("plays", {"site.yml": PLAY, "roles/x/tasks/main.yml": "- ping:\n"})
    s = add(h, "site", url, "git", entrypoint="site.yml", exec_type="ansible")
    assert s["exec_type"] == "ansible" and s["entrypoint"] == "site.yml"


def test_bad_input_is_refused_in_words_and_stores_nothing(controller: Controller,
                                                          srv: GitServer) -> None:
    h = controller.session()
    add(h, "taken", RUN)
    before = total(h)
    repo = srv.add_repo("bad", {"run.sh": RUN})
    fake = srv.add_file("/dl/fake.tar.gz", b"<html>not an archive</html>")
    good = srv.add_file("/dl/good.tar.gz", tgz({"run.sh": RUN}))
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"location_type": "url", "script": srv.url + "/dl/missing.sh"}, 422, "script", "HTTP 404"),
        ({"location_type": "url", "script": fake, "entrypoint": "run.sh"}, 422, "script",
         "not a .tar.gz archive"),
        ({"location_type": "url", "script": good, "entrypoint": "main.sh"}, 422, "entrypoint",
         "'main.sh' is not a file"),
        ({"location_type": "url", "script": good}, 422, "entrypoint", "give entrypoint"),
        ({"location_type": "git", "script": repo, "entrypoint": "nope.sh"}, 422, "entrypoint", "run.sh"),
        ({"location_type": "git", "script": repo}, 422, "entrypoint", "entrypoint is required"),
        ({"location_type": "git", "script": repo + "#no-such-branch", "entrypoint": "run.sh"}, 422,
         "script", "no branch, tag or commit"),
        ({"location_type": "git", "script": srv.url + "/git/missing.git", "entrypoint": "run.sh"},
         422, "script", "not found"),
        ({"location_type": "git", "script": "file:///etc", "entrypoint": "passwd"}, 422, "script", "file:"),
        ({"location_type": "git", "script": "ssh://git@127.0.0.1/x.git", "entrypoint": "a"}, 422,
         "script", "ssh:"),
        ({"location_type": "github", "script": "ext::sh -c id", "entrypoint": "a"}, 422, "script", "http"),
        ({"location_type": "url", "script": "file:///etc/passwd"}, 422, "script", "file:"),
        ({"location_type": "url", "script": "http://127.0.0.1:1/x.sh"}, 502, "script", "cannot reach"),
        ({"location_type": "inline", "script": "x" * (600 * 1024)}, 413, "script", "at most 524288 bytes"),
        ({"location_type": "inline", "script": "   "}, 422, "script", "script is required"),
        ({"location_type": "svn", "script": RUN}, 422, "location_type", "location_type"),
        ({"location_type": "inline", "script": RUN, "exec_type": "python"}, 422, "exec_type", "exec_type"),
        ({"location_type": "inline", "script": RUN, "name": "taken"}, 409, "name", "exists already"),
    ]
    for extra, status, field, words in cases:
        body = {"name": "bad", "exec_type": "executable", **extra}
        r = h.post("/api/v2/scripts", body)
        assert r.status == status, (extra.get("script", "")[:80], r.status, r.body)
        err = r.body["error"]
        assert err["details"].get("field") == field and words in err["message"], (extra, err)
    assert total(h) == before
    assert h.get("/api/v2/scripts/bad").status == 404


def test_another_organisations_scripts_are_not_found(controller: Controller) -> None:
    h = controller.session()
    sid = add(h, "private-one", RUN)["id"]
    controller.adduser("mallory@example.com", "correct horse battery", "--org", "Mallory")
    t = controller.session("mallory@example.com", "correct horse battery")
    for method, path in (("GET", ""), ("GET", "/file"), ("POST", "/refresh"), ("DELETE", "")):
        for ref in (sid, "private-one"):
            assert t.request(method, f"/api/v2/scripts/{ref}{path}").status == 404, (method, path)
    assert t.put(f"/api/v2/scripts/{sid}", {"name": "mine"}).status == 404
    assert total(t) == 0
    add(t, "private-one", "#!/bin/sh\n")  # names are per organisation
    assert h.get(f"/api/v2/scripts/{sid}").body["data"]["name"] == "private-one"


def test_local_sources_are_refused_unless_allowed(tmp_path: Path, srv: GitServer) -> None:
    c = Controller(tmp_path, extra_env={"OVERCAST_ALLOW_LOCAL_CLOUDS": "false"})
    c.adduser("admin@example.com", "correct horse battery", "--admin", "--org", "Acme")
    c.start()
    try:
        h = c.session()
        url = srv.add_repo("local", {"run.sh": RUN})
        for body in ({"location_type": "git", "script": url, "entrypoint": "run.sh"},
                     {"location_type": "url", "script": srv.add_file("/dl/l.sh", RUN.encode())},
                     {"location_type": "url", "script": "http://localhost:1/x.sh"},
                     {"location_type": "url", "script": "http://169.254.169.254/latest/meta-data"}):
            r = h.post("/api/v2/scripts", dict(body, name="l", exec_type="executable"))
            assert r.status == 403 and "allow_local_clouds" in r.body["error"]["message"], r.body
        assert total(h) == 0
    finally:
        c.stop()
