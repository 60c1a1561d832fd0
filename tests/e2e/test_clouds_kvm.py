"""KVM end to end through the REST API against libvirt's built-in test hypervisor
(``test:///default``: one running guest named "test" on a host, state shared by every
connection of the controller process): the host and its guest as a tree, stop and see the
state change audited, suspend and resume, create a guest, destroy it and see it missing."""

from __future__ import annotations

import pytest

from tests.support.clouds import audit, machines, poll, wait_job
from tests.support.controller import Controller, Http

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed (make test installs it)")


def act(h: Http, mid: str, verb: str, body: dict[str, str] | None = None) -> None:
    r = h.post(f"/api/v2/machines/{mid}/actions/{verb}", body)
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"])
    assert job["status"] == "succeeded", job


def test_kvm_host_and_guests(fresh_controller: Controller) -> None:
    h = fresh_controller.session()
    r = h.post("/api/v2/clouds", {"name": "Lab KVM", "provider": "kvm",
                                  "credentials": {"uri": "test:///default"}})
    assert r.status == 201, r.body
    cid = r.body["data"]["id"]
    poll(h, cid)
    ms = {m["name"]: m for m in machines(h, cid)}
    guest = ms["test"]
    [host] = [m for m in ms.values() if guest["id"] in m["children"]]
    assert guest["parent"] == host["id"] and guest["state"] == "running"
    act(h, guest["id"], "stop")
    poll(h, cid)
    assert h.get(f"/api/v2/machines/{guest['id']}").body["data"]["state"] == "stopped"
    assert any(e["details"]["changes"]["state"]["to"] == "stopped"
               for e in audit(h, "machine.changed", guest["id"]))
    act(h, guest["id"], "start")
    act(h, guest["id"], "suspend")
    poll(h, cid)
    assert h.get(f"/api/v2/machines/{guest['id']}").body["data"]["state"] in ("paused", "suspended")
    act(h, guest["id"], "resume")
    sizes = h.get(f"/api/v2/sizes?cloud={cid}").body["data"]
    assert sizes
    r = h.post("/api/v2/machines", {"cloud": cid, "name": "made-here", "size": sizes[0]["id"]})
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"])
    assert job["status"] == "succeeded", job
    poll(h, cid)
    made = {m["name"]: m for m in machines(h, cid)}["made-here"]
    assert made["parent"] == host["id"]
    act(h, made["id"], "destroy")
    poll(h, cid)
    assert h.get(f"/api/v2/machines/{made['id']}").body["data"]["missing_since"]
    assert audit(h, "machine.missing", made["id"])
    r = h.post(f"/api/v2/machines/{guest['id']}/actions/resize", {"size": sizes[0]["id"]})
    assert r.status == 422 and r.body["error"]["code"] == "unsupported"
