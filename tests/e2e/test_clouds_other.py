"""Bare metal ("other server") through the REST API, as a user would: add a cloud of hosts
reached over SSH (a real sshd in a network namespace), see the host as a running machine
with its facts, see it become unreachable when its sshd stops (detected by polling,
audited), and the ways adding such a cloud fails. Reboot is never sent here: the namespace
shares this machine's processes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncssh
import pytest

from tests.support import sshd as sshd_support
from tests.support.clouds import audit, machines, poll
from tests.support.controller import Controller, Http
from tests.support.netns import Lab

why = sshd_support.available()
pytestmark = pytest.mark.skipif(why is not None, reason=why or "")


@dataclass
class World:
    sshd: sshd_support.Sshd
    key: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("bm")
    key = asyncssh.generate_private_key("ssh-ed25519")
    with Lab(subnet=random.randint(150, 199)) as lab:
        sshd = sshd_support.Sshd(lab.add_host(), tmp / "web", hostname="ocbare")
        sshd.authorize(key.export_public_key().decode())
        with sshd:
            yield World(sshd, key.export_private_key().decode())


def _add(h: Http, name: str, hosts: list[dict[str, Any]]) -> Any:
    return h.post("/api/v2/clouds", {"name": name, "provider": "other",
                                     "credentials": {"hosts": hosts}})


def test_a_host_over_ssh_is_a_machine_and_its_outage_is_detected(
        controller: Controller, world: World) -> None:
    h = controller.session()
    host = {"host": world.sshd.host.address, "alias": "bare1", "key": world.key}
    r = _add(h, "Rack 1", [host])
    assert r.status == 201, r.body
    cloud = r.body["data"]
    assert world.key not in str(r.body) and "BEGIN" not in str(r.body)
    assert cloud["provider"] == "other" and cloud["credentials_set"] == ["hosts.0.key"]
    assert cloud["config"]["hosts"][0]["host"] == world.sshd.host.address
    status = poll(h, cloud["id"])
    assert status["state"] == "ok", status
    [m] = machines(h, cloud["id"])
    assert m["name"] == "bare1" and m["state"] == "running"
    assert m["hostname"] == "ocbare" and m["cores"] >= 1
    assert world.sshd.host.address in m["public_ips"] + m["private_ips"]
    detected = audit(h, "machine.detected", m["id"])
    assert detected and detected[0]["details"]["detected_by"] == "polling"
    assert detected[0]["actor"]["kind"] == "system"
    # the cloud's view never carries the key, also not when shown alone
    shown = h.get(f"/api/v2/clouds/{cloud['id']}")
    assert shown.status == 200 and "BEGIN" not in str(shown.body)
    assert shown.body["data"]["totals"]["machines"] == 1
    # actions the provider does not offer are a 422 that says so
    r = h.post(f"/api/v2/machines/{m['id']}/actions/stop")
    assert r.status == 422 and "does not support stop" in r.body["error"]["message"], r.body
    world.sshd.stop()
    try:
        poll(h, cloud["id"])
        [m2] = machines(h, cloud["id"])
        assert m2["state"] == "unreachable"
        assert "refused" in m2["extra"]["error"]
        changed = audit(h, "machine.changed", m["id"])
        assert changed and changed[0]["details"]["changes"]["state"] == {
            "from": "running", "to": "unreachable"}
    finally:
        world.sshd.start()
    poll(h, cloud["id"])
    assert machines(h, cloud["id"])[0]["state"] == "running"
    r = h.delete(f"/api/v2/clouds/{cloud['id']}")
    assert r.status == 200 and r.body["data"]["forgotten"]["machine"] == 1
    assert machines(h, cloud["id"]) == []
    assert audit(h, "cloud.remove", cloud["id"])


def test_adding_a_cloud_with_bad_credentials_says_why_and_stores_nothing(
        controller: Controller, world: World) -> None:
    h = controller.session()
    before = h.get("/api/v2/clouds").body["meta"]["total"]
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    r = _add(h, "Refused", [{"host": world.sshd.host.address, "key": stranger}])
    assert r.status == 422 and r.body["error"]["code"] == "provider_auth", r.body
    assert r.body["error"]["details"]["field"] == "credentials.hosts[0].key", r.body
    assert world.sshd.host.address in r.body["error"]["message"]
    assert "BEGIN" not in str(r.body)
    r = _add(h, "Garbage", [{"host": world.sshd.host.address, "key": "not a key"}])
    assert r.status == 422 and "not a key" not in str(r.body), r.body
    r = _add(h, "Nowhere", [{"host": "10.255.255.1", "port": 1, "key": world.key}])
    assert r.status in (502, 503), r.body
    r = h.post("/api/v2/clouds", {"name": "X", "provider": "nimbus", "credentials": {}})
    assert r.status == 422 and "unknown provider" in r.body["error"]["message"]
    r = h.post("/api/v2/clouds", {"name": "X", "provider": "other", "credentials": {}})
    assert r.status == 422 and r.body["error"]["details"]["field"] == "credentials.hosts"
    r = h.post("/api/v2/clouds", {"name": "X", "provider": "other", "surprise": 1})
    assert r.status == 422
    r = h.request("POST", "/api/v2/clouds", raw=b"{not json")
    assert r.status == 400
    assert h.get("/api/v2/clouds").body["meta"]["total"] == before
    failed = audit(h, "cloud.add")
    assert any(e["outcome"] == "failed" for e in failed)
    assert "BEGIN" not in str(failed)


def test_another_organisations_cloud_is_not_found(controller: Controller, world: World) -> None:
    h = controller.session()
    r = _add(h, "Mine", [{"host": world.sshd.host.address, "key": world.key}])
    assert r.status == 201, r.body
    cid = r.body["data"]["id"]
    controller.adduser("mallory@example.com", "correct horse battery", "--org", "Evil")
    m = controller.session("mallory@example.com", "correct horse battery")
    assert m.get(f"/api/v2/clouds/{cid}").status == 404
    assert m.request("PUT", f"/api/v2/clouds/{cid}", {"name": "mine now"}).status == 404
    assert m.delete(f"/api/v2/clouds/{cid}").status == 404
    assert m.post(f"/api/v2/clouds/{cid}/actions/poll").status == 404
    assert m.get("/api/v2/clouds").body["meta"]["total"] == 0
    assert h.get(f"/api/v2/clouds/{cid}").body["data"]["name"] == "Mine"
