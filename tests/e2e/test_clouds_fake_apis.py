"""DigitalOcean and OpenStack end to end through the REST API, against local servers that
answer like the providers' documented APIs (tests/support/fake_*.py): add the cloud, create
a machine (a job), see it, stop it and see the state change audited, destroy it and see it
missing; a wrong credential is refused in words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clouds import audit, machines, poll, wait_job
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http
from tests.support.fake_digitalocean import FakeServer, start_fake_digitalocean
from tests.support.fake_openstack import start_fake_openstack


@pytest.fixture(scope="module")
def do_api() -> Iterator[FakeServer]:
    s = start_fake_digitalocean()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def os_api() -> Iterator[Any]:
    s = start_fake_openstack()
    yield s
    s.stop()


def lifecycle(h: Http, cloud: str, create: dict[str, Any], stopped: str = "stopped") -> None:
    poll(h, cloud)
    r = h.post("/api/v2/machines", {"cloud": cloud, "name": "web-1", **create})
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"])
    assert job["status"] == "succeeded", job
    mid = job["result"][0]["id"]
    poll(h, cloud)
    poll(h, cloud)  # the fakes settle transitional states on the next read, as the real ones do
    [m] = [m for m in machines(h, cloud) if m["id"] == mid]
    assert m["state"] == "running" and m["name"] == "web-1"
    r = h.post(f"/api/v2/machines/{mid}/actions/stop")
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cloud)
    poll(h, cloud)
    assert h.get(f"/api/v2/machines/{mid}").body["data"]["state"] == stopped
    assert any(e["details"].get("changes", {}).get("state", {}).get("to") == stopped
               for e in audit(h, "machine.changed", mid))
    assert [e["outcome"] for e in audit(h, "machine.stop", mid)] == ["success"]
    r = h.post(f"/api/v2/machines/{mid}/actions/destroy")
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cloud)
    gone = h.get(f"/api/v2/machines/{mid}").body["data"]
    assert gone["missing_since"], gone
    assert audit(h, "machine.missing", mid)


def test_digitalocean(controller: Controller, do_api: FakeServer) -> None:
    h = controller.session()
    r = h.post("/api/v2/clouds", {"name": "DO", "provider": "digitalocean",
                                  "credentials": {"token": "wrong", "endpoint": do_api.url}})
    assert r.status == 422 and r.body["error"]["code"] == "provider_auth", r.body
    assert r.body["error"]["details"]["field"] == "credentials.token", r.body
    assert "refused the API token" in r.body["error"]["message"]
    assert "wrong" not in r.body["error"]["message"]
    r = h.post("/api/v2/clouds", {"name": "DO", "provider": "digitalocean",
                                  "credentials": {"token": do_api.token, "endpoint": do_api.url}})
    assert r.status == 201, r.body
    assert do_api.token not in str(r.body)
    cid = r.body["data"]["id"]
    lifecycle(h, cid, {"size": "s-1vcpu-1gb", "image": "ubuntu-22-04-x64", "location": "nyc3"})
    sizes = h.get(f"/api/v2/sizes?cloud={cid}").body["data"]
    assert any(s["cost"].get("hourly") for s in sizes)
    # DNS, with a record changed the generic way (a new one first, then the old one removed)
    r = h.post("/api/v2/zones", {"cloud": cid, "domain": "do.example"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded", r.body
    poll(h, cid)
    [zone] = [z for z in h.get(f"/api/v2/zones?cloud={cid}").body["data"] if z["domain"] == "do.example"]
    r = h.post(f"/api/v2/zones/{zone['id']}/records", {"name": "www", "type": "A", "data": "192.0.2.1"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded", r.body
    poll(h, cid)
    [www] = [x for x in h.get(f"/api/v2/zones/{zone['id']}/records").body["data"] if x["name"] == "www"]
    r = h.put(f"/api/v2/zones/{zone['id']}/records/{www['id']}", {"data": "192.0.2.2"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded", r.body
    poll(h, cid)
    live = [x["rdata"] for x in h.get(f"/api/v2/zones/{zone['id']}/records").body["data"]
            if x["name"] == "www" and not x["missing_since"]]
    assert live == [["192.0.2.2"]]


def test_openstack(controller: Controller, os_api: Any) -> None:
    h = controller.session()
    creds = {"authUrl": os_api.url, "user": os_api.user, "password": os_api.password,
             "tenant": os_api.tenant}
    r = h.post("/api/v2/clouds", {"name": "OS", "provider": "openstack",
                                  "credentials": dict(creds, password="nope")})
    assert r.status == 422 and r.body["error"]["code"] == "provider_auth", r.body
    assert r.body["error"]["details"]["field"] == "credentials.password", r.body
    assert "keystone" in r.body["error"]["message"] and "nope" not in str(r.body)
    r = h.post("/api/v2/clouds", {"name": "OS", "provider": "openstack", "credentials": creds})
    assert r.status == 201, r.body
    assert os_api.password not in str(r.body)
    cid = r.body["data"]["id"]
    poll(h, cid)
    image = h.get(f"/api/v2/images?cloud={cid}").body["data"][0]["external_id"]
    lifecycle(h, cid, {"size": "1", "image": image})


def test_a_token_revoked_later_shows_on_the_cloud_naming_the_field(
        controller: Controller, do_api: FakeServer) -> None:
    h = controller.session()
    r = h.post("/api/v2/clouds", {"name": "DO revoked", "provider": "digitalocean",
                                  "credentials": {"token": do_api.token, "endpoint": do_api.url}})
    assert r.status == 201, r.body
    cid, token = r.body["data"]["id"], do_api.token
    assert poll(h, cid)["state"] == "ok"
    do_api.accept("a-new-token-the-cloud-does-not-have")
    try:
        failures = 0  # (the cloud's own poller may poll in between, after its creation)
        for _ in range(2):
            status = poll(h, cid)
            assert status["state"] == "error" and status["failures"] > failures, status
            failures = status["failures"]
            assert status["error_code"] == "provider_auth", status
            assert status["error_field"] == "credentials.token", status
            assert "refused the API token" in status["last_error"], status
        shown = h.get(f"/api/v2/clouds/{cid}").body["data"]["status"]
        assert shown["error_field"] == "credentials.token"
        [failed] = audit(h, "cloud.poll_failed", cid)  # the change into failure, once
        assert failed["details"]["field"] == "credentials.token"
        assert failed["details"]["code"] == "provider_auth"
    finally:
        do_api.accept(token)
    status = poll(h, cid)
    assert (status["state"], status["failures"], status.get("error_field", "")) == ("ok", 0, "")
    assert len(audit(h, "cloud.poll_recovered", cid)) == 1


def test_clouds_on_the_controllers_own_host_need_the_operators_consent(
        tmp_path: Path, do_api: FakeServer) -> None:
    c = Controller(tmp_path, {"OVERCAST_ALLOW_LOCAL_CLOUDS": "false"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Careful")
    c.start()
    try:
        h = c.session()
        for provider, creds in (
                ("digitalocean", {"token": do_api.token, "endpoint": do_api.url}),
                ("kvm", {"uri": "qemu:///system"}),
                ("openstack", {"authUrl": "http://169.254.169.254/v3", "user": "u", "password": "p"})):
            r = h.post("/api/v2/clouds", {"name": provider, "provider": provider, "credentials": creds})
            assert r.status == 403 and "allow_local_clouds" in r.body["error"]["message"], r.body
        assert h.get("/api/v2/clouds").body["meta"]["total"] == 0
    finally:
        c.stop()


def test_an_endpoint_that_never_answers_is_a_timeout_not_a_hang(tmp_path: Path) -> None:
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does), never answers
    c = Controller(tmp_path, {"OVERCAST_CLOUD_CALL_TIMEOUT": "2"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Patient")
    c.start()
    try:
        h = c.session()
        t0 = time.monotonic()
        r = h.post("/api/v2/clouds", {"name": "Silent", "provider": "digitalocean", "credentials": {
            "token": "t", "endpoint": f"http://127.0.0.1:{silent.getsockname()[1]}"}})
        took = time.monotonic() - t0
        assert r.status == 503 and r.body["error"]["code"] == "provider_unavailable", r.body
        assert "in time" in r.body["error"]["message"] or "within" in r.body["error"]["message"]
        assert took < 10, took
        assert h.get("/api/v2/health").status == 200  # the controller kept serving
    finally:
        c.stop()
        silent.close()
