"""The script service over a real store: what a run gets is exactly what was stored and its
checksum holds (a changed or missing content is refused as corrupt), a failed add stores
nothing, and the audit log never holds the content."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.accounts.model import Principal
from controller.errors import Forbidden, Invalid, NotFound
from controller.events.writer import Writer
from controller.scripts.model import ScriptCorrupt, content_key
from controller.scripts.service import ScriptService
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store import open_store
from controller.store.base import Store
from tests.support.gitserver import GitServer

ORG = "o1"
P = Principal({"id": "u1", "email": "a@example.com"}, {"id": ORG, "name": "Acme"}, "owner", "token", "t1")
OTHER = Principal({"id": "u2", "email": "t@example.com"}, {"id": "o2", "name": "T"}, "owner", "token", "t2")
TEXT = "#!/bin/sh\necho the-secret-marker\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "db")
    yield s
    s.close()


def service(store: Store, tmp_path: Path, allow_local: bool = True) -> ScriptService:
    settings = Settings(data_dir=str(tmp_path), allow_local_clouds=allow_local)
    return ScriptService(settings, store, Writer(store), SecretBox(b"k" * 32))


async def test_payload_is_the_stored_snapshot_checked(store: Store, tmp_path: Path) -> None:
    svc = service(store, tmp_path)
    view = await svc.add(P, P.actor(), {"name": "hello", "exec_type": "executable",
                                        "location_type": "inline", "script": TEXT, "entrypoint": "x"})
    assert view["entrypoint"] == "" and view["sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    got, content = svc.payload(P, "hello")
    assert got == view and content == TEXT.encode()
    with pytest.raises(NotFound):
        svc.payload(OTHER, view["id"])
    store.put(content_key(ORG, view["id"]), TEXT.replace("the", "rm -rf").encode())
    with pytest.raises(ScriptCorrupt, match="corrupt") as e:
        svc.payload(P, view["id"])
    assert e.value.status == 500 and e.value.code == "script_corrupt"
    store.delete(content_key(ORG, view["id"]))
    with pytest.raises(ScriptCorrupt):
        svc.payload(P, view["id"])
    entries = [json.loads(v) for _, v in store.scan("audit/")]
    assert [e["action"] for e in entries if e.get("action", "").startswith("script.")] == ["script.add"]
    assert "the-secret-marker" not in str(entries)


async def test_a_failed_add_stores_nothing(store: Store, tmp_path: Path) -> None:
    svc = service(store, tmp_path)
    with GitServer(tmp_path) as srv:
        url = srv.add_repo("r", {"run.sh": TEXT})
        with pytest.raises(Invalid) as e:
            await svc.add(P, P.actor(), {"name": "r", "exec_type": "executable",
                                         "location_type": "git", "script": url, "entrypoint": "nope.sh"})
        assert e.value.details["field"] == "entrypoint"
        strict = service(store, tmp_path, allow_local=False)
        srv.requests.clear()
        with pytest.raises(Forbidden, match="allow_local_clouds"):
            await strict.add(P, P.actor(), {"name": "r", "exec_type": "executable",
                                            "location_type": "git", "script": url, "entrypoint": "run.sh"})
        assert srv.requests == []  # refused before anything was asked
        with pytest.raises(Forbidden):
            await strict.add(P, P.actor(), {"name": "r", "exec_type": "executable",
                                            "location_type": "url", "script": srv.add_file("/r.sh", b"x")})
    assert list(store.scan("script")) == [] and list(store.scan("audit/")) == []


async def test_credentials_in_a_url_are_sealed_and_used_again(store: Store, tmp_path: Path) -> None:
    svc = service(store, tmp_path)
    with GitServer(tmp_path) as srv:
        url = srv.add_repo("r", {"run.sh": TEXT})
        secret_url = url.replace("http://", "http://deploy:tok3n-value@") + "#main"
        view = await svc.add(P, P.actor(), {"name": "r", "exec_type": "executable",
                                            "location_type": "git", "script": secret_url,
                                            "entrypoint": "run.sh"})
        assert view["source"] == url and view["ref"] == "main"
        srv.commit("r", {"run.sh": TEXT + "echo more\n"})
        new, changed = await svc.refresh(P, P.actor(), "r")
        assert changed and new["commit"] == srv.head("r")
    dump = b"".join(v for _, v in store.scan(""))
    assert b"tok3n-value" not in dump  # sealed in the document, nowhere in the audit log
