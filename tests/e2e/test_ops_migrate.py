"""Upgrades migrate stored documents forward: a controller started on a data directory made
by the previous release (tests/fixtures/datadir-*.tar.gz, built by
tests/fixtures/build_datadir.py) migrates its documents and serves them; and a store
written by a newer release is refused at start with one clear line."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from controller.services import DOC_KINDS
from controller.store import open_store
from tests.support.controller import OVERCAST, ROOT, Controller

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RELEASES = sorted(p.name.removeprefix("datadir-").removesuffix(".tar.gz")
                  for p in FIXTURES.glob("datadir-*.tar.gz"))


def _unpack(release: str, tmp: Path) -> tuple[Controller, dict[str, Any]]:
    info = json.loads((FIXTURES / f"datadir-{release}.json").read_text())
    with tarfile.open(FIXTURES / f"datadir-{release}.tar.gz") as tar:
        tar.extractall(tmp, filter="data")  # members are data/...: the Controller's data_dir
    return Controller(tmp), info


def _raw(data_dir: Path, key: str) -> dict[str, Any]:
    store = open_store(data_dir / "store", "ro")
    try:
        return json.loads(store.get(key) or b"{}")  # type: ignore[no-any-return]
    finally:
        store.close()


def test_there_is_a_fixture() -> None:
    assert RELEASES, "tests/fixtures/datadir-<release>.tar.gz: see tests/fixtures/build_datadir.py"


@pytest.mark.parametrize("release", RELEASES)
def test_a_previous_releases_data_directory_is_migrated_on_start(tmp_path: Path, release: str) -> None:
    c, info = _unpack(release, tmp_path)
    org_agents = info["clouds"]["Agents"]
    org = _org_of(c, info)
    before = _raw(c.data_dir, f"cloud/{org}/{org_agents}")
    assert before["_v"] == 1 and "enabled" not in before  # the format this test upgrades from
    c.start()
    try:
        assert "migrated 2 cloud documents to schema version 2" in c.log_path.read_text()
        admin = c.session(info["admin"]["email"], info["admin"]["password"])
        for u in info["users"]:
            assert c.session(u["email"], u["password"]).get("/api/v2/auth").status == 200
        h = c.http(info["api_token"])  # a token made by the previous release still works
        assert h.get("/api/v2/auth").body["data"]["user"]["email"] == info["admin"]["email"]
        # what the migration changed, as a user sees it: the Agents cloud now has the fields
        # every cloud has, so a search for enabled clouds finds it
        clouds = h.get("/api/v2/clouds").body["data"]
        assert all("enabled" in x and "tags" in x for x in clouds), clouds
        enabled = h.get("/api/v2/clouds?search=enabled:true").body["data"]
        assert [x["name"] for x in enabled] == ["Agents"]  # the fixture's DO cloud is disabled
        do = next(x for x in clouds if x["name"] == "Fixture DO")
        assert do["tags"] == {"env": "fixture"} and do["enabled"] is False
        # the rest of the fixture, as it was
        agents = h.get("/api/v2/agents").body["data"]
        assert [(a["id"], a["name"]) for a in agents] == [(info["agent"]["id"], "fixture-host")]
        assert h.get(f"/api/v2/keys/{info['key_id']}").status == 200
        assert h.get(f"/api/v2/scripts/{info['script_id']}").status == 200
        r = c.cli("audit", "verify", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout + r.stderr
        assert admin.get("/api/v2/auth").status == 200
    finally:
        assert c.stop() == 0
    after = _raw(c.data_dir, f"cloud/{org}/{org_agents}")
    assert after["_v"] == 2 and after["enabled"] is True and after["_user_tags"] == {}
    versions = {k.name: k.version for k in DOC_KINDS}
    store = open_store(c.data_dir / "store", "ro")
    try:
        assert {k: int(store.get(f"meta/schema/{k}") or b"0") for k in versions} == versions
    finally:
        store.close()
    # a second start has nothing to migrate
    c.log_path.rename(c.log_path.with_name("controller.log.1"))
    c.start()
    c.stop()
    assert "migrated" not in c.log_path.read_text()


def _org_of(c: Controller, info: dict[str, Any]) -> str:
    store = open_store(c.data_dir / "store", "ro")
    try:
        return (store.get(f"agentid/{info['agent']['id']}") or b"").decode()
    finally:
        store.close()


def test_a_store_from_a_newer_release_is_refused_at_start(tmp_path: Path) -> None:
    import subprocess

    c, _ = _unpack(RELEASES[-1], tmp_path)
    store = open_store(c.data_dir / "store")
    store.put("meta/schema/user", b"9")
    store.close()
    r = subprocess.run([*OVERCAST, "controller"], env=c.env(), cwd=str(ROOT),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "overcast: cannot start: the store was written by a newer Overcast: schema versions "
        "user 9 (this controller knows 1); run that version (or newer), or restore a backup "
        "made by this one")
    assert "Traceback" not in r.stderr
    # nothing was migrated on the way out: the older cloud documents are as they were
    assert _raw(c.data_dir, "meta/schema/cloud") == 1
    # overcast doctor says the same, and fails
    r = c.cli("doctor")
    assert r.returncode == 1 and "fail  schema" in r.stdout and "user 9 > 1" in r.stdout
