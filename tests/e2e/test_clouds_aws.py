"""AWS end to end through the REST API against a local moto server, as a user would: add the
cloud (credentials checked), create machines (a job), see them with sizes, prices and
costs, stop one and see the state change with its audit entries, resize and rename it,
volumes, networks and DNS through their endpoints, tags, costs, and destroy."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from tests.support.clouds import audit, machines, poll, wait_job
from tests.support.controller import Controller, Http
from tests.support.moto import ACCESS_KEY, SECRET_KEY, MotoServer, moto_fixture

moto = moto_fixture("module")


@pytest.fixture(scope="module")
def aws(controller: Controller, moto: MotoServer) -> Iterator[tuple[Http, dict[str, Any]]]:
    h = controller.session()
    r = h.post("/api/v2/clouds", {"name": "AWS test", "provider": "amazon", "credentials": {
        "apikey": ACCESS_KEY, "apisecret": SECRET_KEY, "region": "us-east-1", "endpoint": moto.url}})
    assert r.status == 201, r.body
    yield h, r.body["data"]


def watch_machine_events(h: Http, machine_id: str) -> Future[list[dict[str, Any]]]:
    """Machine events of ``machine_id`` from the WebSocket, until one says "stopped" (or 15 s);
    connected before this returns."""
    import aiohttp

    ready = threading.Event()
    done: Future[list[dict[str, Any]]] = Future()

    async def run() -> None:
        seen: list[dict[str, Any]] = []
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in h.cookies.items())}
        async with aiohttp.ClientSession() as s, s.ws_connect(
                h.base + "/api/v2/events?kinds=machine", headers=headers) as ws:
            first = await ws.receive(timeout=10)  # {"type": "ready"}: subscribed
            assert json.loads(first.data)["type"] == "ready"
            ready.set()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                ev = json.loads(msg.data)
                if ev.get("id") == machine_id:
                    seen.append(ev)
                    if ev.get("data", {}).get("state") == "stopped":
                        break
        done.set_result(seen)

    threading.Thread(target=lambda: asyncio.run(run()), daemon=True).start()
    assert ready.wait(10), "the event stream did not open"
    return done


def image(h: Http, cloud: str) -> str:
    poll(h, cloud)
    r = h.get(f"/api/v2/images?cloud={cloud}&search=al2023&limit=1000")
    assert r.status == 200 and r.body["data"], r.body
    return str(r.body["data"][0]["id"])


def create(h: Http, cloud: str, **kw: Any) -> list[dict[str, Any]]:
    body = {"cloud": cloud, "name": "web", "size": "t2.micro", "image": image(h, cloud), **kw}
    r = h.post("/api/v2/machines", body)
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"])
    assert job["status"] == "succeeded", job
    poll(h, cloud)
    made = {m["id"] for m in job["result"]}
    return [m for m in machines(h, cloud) if m["id"] in made]


def test_the_secret_is_never_shown(aws: tuple[Http, dict[str, Any]]) -> None:
    h, cloud = aws
    assert SECRET_KEY not in str(cloud) and cloud["credentials_set"] == ["apisecret"]
    assert cloud["config"]["apikey"] == "AKIA…0001" and ACCESS_KEY not in str(cloud)
    assert cloud["config"]["region"] == "us-east-1"
    assert SECRET_KEY not in str(h.get(f"/api/v2/clouds/{cloud['id']}").body)
    assert SECRET_KEY not in str(audit(h, "cloud.add"))


def test_create_stop_resize_rename_destroy(aws: tuple[Http, dict[str, Any]]) -> None:
    h, cloud = aws
    dry = h.post("/api/v2/machines", {"cloud": cloud["id"], "name": "x", "size": "t2.micro",
                                      "image": image(h, cloud["id"]), "dry": True, "quantity": 2})
    assert dry.status == 200 and dry.body["data"]["plan"]["names"] == ["x-1", "x-2"], dry.body
    [m] = create(h, cloud["id"], tags={"team": "web"})
    assert m["state"] == "running" and m["size"] == "t2.micro" and m["provider"] == "amazon"
    assert m["cost"]["source"] == "pricing" and m["cost"]["hourly"] > 0
    assert m["tags"]["Name"] == "web"
    assert audit(h, "machine.create") and audit(h, "machine.detected", m["id"])
    r = h.post(f"/api/v2/machines/{m['id']}/actions/reboot")
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    assert [e["outcome"] for e in audit(h, "machine.reboot", m["id"])] == ["success"]
    events = watch_machine_events(h, m["id"])
    r = h.post(f"/api/v2/machines/{m['id']}/actions/stop")
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"])
    assert job["status"] == "succeeded" and job["progress"], job
    poll(h, cloud["id"])
    stopped = h.get(f"/api/v2/machines/{m['id']}").body["data"]
    assert stopped["state"] == "stopped" and stopped["cost"]["hourly"] == 0
    # the change reached the live event stream (the WebSocket a console listens to)
    seen = events.result(timeout=15)
    assert any(ev["type"] == "changed" and ev["data"].get("state") == "stopped" for ev in seen), seen
    [entry] = [e for e in audit(h, "machine.stop", m["id"])]
    assert entry["outcome"] == "success" and entry["actor"]["email"]
    changed = audit(h, "machine.changed", m["id"])
    assert any(e["details"]["changes"].get("state", {}).get("to") == "stopped" for e in changed)
    r = h.post(f"/api/v2/machines/{m['id']}/actions/resize", {"size": "t2.small"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    r = h.post(f"/api/v2/machines/{m['id']}/actions/rename", {"name": "web-renamed"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cloud["id"])
    cur = h.get(f"/api/v2/machines/{m['id']}").body["data"]
    assert cur["size"] == "t2.small" and cur["name"] == "web-renamed"
    # a failing action is a failed job, audited as failed, with the provider's reason
    r = h.post(f"/api/v2/machines/{m['id']}/actions/resize", {"size": "t9.huge"})
    job = wait_job(h, r.body["job_id"])
    assert job["status"] == "failed" and "t9.huge" in job["error"]["message"]
    assert any(e["outcome"] == "failed" for e in audit(h, "machine.resize", m["id"]))
    # unsupported: a 422 before any job
    r = h.post(f"/api/v2/machines/{m['id']}/actions/suspend")
    assert r.status == 422 and r.body["error"]["code"] == "unsupported"
    r = h.post(f"/api/v2/machines/{m['id']}/actions/destroy")
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cloud["id"])
    assert h.get(f"/api/v2/machines/{m['id']}").body["data"]["state"] == "terminated"


def test_volumes_networks_and_dns(aws: tuple[Http, dict[str, Any]]) -> None:
    h, cloud = aws
    cid = cloud["id"]
    [m] = create(h, cid, name="db")
    loc = m["location"]
    r = h.post("/api/v2/volumes", {"cloud": cid, "name": "data", "size": 8, "location": loc})
    assert r.status == 202 and wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cid)
    [vol] = [v for v in h.get(f"/api/v2/volumes?cloud={cid}").body["data"] if v["name"] == "data"]
    assert vol["size"] == 8
    r = h.post(f"/api/v2/volumes/{vol['id']}/actions/attach", {"machine": m["id"], "device": "/dev/sdf"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cid)
    assert h.get(f"/api/v2/volumes/{vol['id']}").body["data"]["attached_to"] == [m["id"]]
    r = h.post(f"/api/v2/volumes/{vol['id']}/actions/detach", {"machine": m["id"]})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    r = h.delete(f"/api/v2/volumes/{vol['id']}")
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cid)
    assert h.get(f"/api/v2/volumes/{vol['id']}").body["data"]["missing_since"]

    r = h.post("/api/v2/networks", {"cloud": cid, "name": "lan", "cidr": "10.42.0.0/16"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cid)
    [net] = [n for n in h.get(f"/api/v2/networks?cloud={cid}").body["data"] if n["name"] == "lan"]
    r = h.post(f"/api/v2/networks/{net['id']}/subnets", {"cidr": "10.42.1.0/24", "location": loc})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cid)
    net = h.get(f"/api/v2/networks/{net['id']}").body["data"]
    assert [s["cidr"] for s in net["subnets"]] == ["10.42.1.0/24"]

    r = h.post("/api/v2/zones", {"cloud": cid, "domain": "example.org"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cid)
    [zone] = [z for z in h.get(f"/api/v2/zones?cloud={cid}").body["data"] if z["domain"] == "example.org"]
    r = h.post(f"/api/v2/zones/{zone['id']}/records", {"name": "www", "type": "A", "data": "10.42.1.5",
                                                       "ttl": 300})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded", r.body
    poll(h, cid)
    recs = h.get(f"/api/v2/zones/{zone['id']}/records").body["data"]
    [www] = [x for x in recs if x["type"] == "A"]
    assert www["rdata"] == ["10.42.1.5"]
    r = h.delete(f"/api/v2/zones/{zone['id']}/records/{www['id']}")
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cid)
    assert h.get(f"/api/v2/zones/{zone['id']}/records/{www['id']}").body["data"]["missing_since"]


def test_tags_and_costs(aws: tuple[Http, dict[str, Any]]) -> None:
    h, cloud = aws
    [m] = create(h, cloud["id"], name="tagged")
    r = h.post("/api/v2/tags", {"operations": [{"operation": "add", "resources": [
        {"resource_type": "machine", "resource_id": m["id"]}], "tags": [
        {"key": "owner", "value": "ops"}, {"key": "cost_per_month", "value": "50"}]}]})
    assert r.status == 200, r.body
    poll(h, cloud["id"])  # a poll keeps tags users set
    cur = h.get(f"/api/v2/machines/{m['id']}").body["data"]
    assert cur["tags"]["owner"] == "ops" and cur["cost"] == {
        "hourly": pytest.approx(50 / 730, abs=1e-6), "monthly": 50.0, "currency": "USD", "source": "tag"}
    assert h.get("/api/v2/machines?search=tags.owner:ops").body["meta"]["total"] >= 1
    tags = h.get("/api/v2/tags?types=machines").body["data"]
    assert {"key": "owner", "value": "ops"}.items() <= next(t for t in tags if t["key"] == "owner").items()
    costs = h.get("/api/v2/costs?tag=owner").body["data"]
    assert costs["org"]["monthly"] >= 50.0
    assert any(c["id"] == cloud["id"] and c["monthly"] >= 50 for c in costs["clouds"])
    assert any(t["value"] == "ops" and t["monthly"] == 50.0 for t in costs["tags"])
    # all or nothing: one bad resource refuses the whole request
    r = h.post("/api/v2/tags", {"operations": [{"operation": "add", "resources": [
        {"resource_type": "machine", "resource_id": m["id"]},
        {"resource_type": "machine", "resource_id": "nope"}], "tags": [{"key": "x", "value": "1"}]}]})
    assert r.status == 404
    assert "x" not in h.get(f"/api/v2/machines/{m['id']}").body["data"]["tags"]


def test_bad_credentials_and_unreachable_endpoints(controller: Controller, moto: MotoServer) -> None:
    h = controller.session()
    base = {"apikey": ACCESS_KEY, "apisecret": SECRET_KEY, "region": "us-east-1"}
    r = h.post("/api/v2/clouds", {"name": "Closed", "provider": "amazon",
                                  "credentials": dict(base, endpoint="http://127.0.0.1:9")})
    assert r.status == 503 and r.body["error"]["code"] == "provider_unavailable", r.body
    r = h.post("/api/v2/clouds", {"name": "Bad", "provider": "amazon",
                                  "credentials": dict(base, region="mars-1", endpoint=moto.url)})
    assert r.status == 422 and r.body["error"]["details"]["field"] == "credentials.region"
    r = h.post("/api/v2/clouds", {"name": "Bad", "provider": "amazon",
                                  "credentials": {"apikey": ACCESS_KEY, "region": "us-east-1"}})
    assert r.status == 422 and r.body["error"]["details"]["field"] == "credentials.apisecret"


def test_another_organisation_sees_and_touches_nothing(
        controller: Controller, aws: tuple[Http, dict[str, Any]]) -> None:
    h, cloud = aws
    [m] = create(h, cloud["id"], name="private")
    r = h.post(f"/api/v2/machines/{m['id']}/actions/stop")
    job_id = r.body["job_id"]
    wait_job(h, job_id)
    poll(h, cloud["id"])
    vols = h.get(f"/api/v2/volumes?cloud={cloud['id']}").body["data"]
    zones = h.get(f"/api/v2/zones?cloud={cloud['id']}").body["data"]
    controller.adduser("eve@example.com", "correct horse battery", "--org", "Elsewhere")
    e = controller.session("eve@example.com", "correct horse battery")
    for path in (f"/api/v2/machines/{m['id']}", f"/api/v2/jobs/{job_id}",
                 f"/api/v2/clouds/{cloud['id']}",
                 *(f"/api/v2/volumes/{v['id']}" for v in vols[:1]),
                 *(f"/api/v2/zones/{z['id']}" for z in zones[:1]),
                 *(f"/api/v2/zones/{z['id']}/records" for z in zones[:1])):
        assert e.get(path).status == 404, path
    for verb in ("start", "destroy"):
        assert e.post(f"/api/v2/machines/{m['id']}/actions/{verb}").status == 404
    assert e.post("/api/v2/machines", {"cloud": cloud["id"], "name": "x"}).status == 404
    assert e.post("/api/v2/volumes", {"cloud": cloud["id"], "name": "x", "size": 1}).status == 404
    r = e.post("/api/v2/tags", {"operations": [{"operation": "add", "resources": [
        {"resource_type": "machine", "resource_id": m["id"]}], "tags": [{"key": "pwned"}]}]})
    assert r.status == 404
    for path in ("/api/v2/machines", "/api/v2/volumes", "/api/v2/zones", "/api/v2/jobs",
                 "/api/v2/sizes", "/api/v2/tags"):
        assert e.get(path).body["meta"]["total"] == 0, path
    assert e.get("/api/v2/costs").body["data"]["org"]["machines"] == 0
    for z in zones[:1]:
        assert e.put(f"/api/v2/zones/{z['id']}?name=mine").status == 404
        assert h.get(f"/api/v2/zones/{z['id']}").body["data"]["name"] != "mine"
    assert "pwned" not in h.get(f"/api/v2/machines/{m['id']}").body["data"]["tags"]
    assert h.get(f"/api/v2/machines/{m['id']}").body["data"]["state"] == "stopped"


def test_filters_by_cloud_name_and_cloud_tags(aws: tuple[Http, dict[str, Any]]) -> None:
    h, cloud = aws
    by_id = h.get(f"/api/v2/machines?cloud={cloud['id']}").body["meta"]["total"]
    by_name = h.get("/api/v2/machines?cloud=AWS%20test").body["meta"]["total"]
    assert by_id == by_name > 0
    r = h.put(f"/api/v2/clouds/{cloud['id']}", {"tags": {"env": "prod"}})
    assert r.status == 200 and r.body["data"]["tags"] == {"env": "prod"}
    r = h.post("/api/v2/tags", {"operations": [{"operation": "add", "resources": [
        {"resource_type": "cloud", "resource_id": cloud["id"]}], "tags": [{"key": "team", "value": "web"}]}]})
    assert r.status == 200
    assert h.get(f"/api/v2/clouds/{cloud['id']}").body["data"]["tags"] == {"env": "prod", "team": "web"}
    r = h.put(f"/api/v2/clouds/{cloud['id']}", {"tags": {"bad key!": "x"}})
    assert r.status == 422


def test_moving_a_cloud_needs_its_secret_again(aws: tuple[Http, dict[str, Any]], moto: MotoServer) -> None:
    h, cloud = aws
    r = h.put(f"/api/v2/clouds/{cloud['id']}", {"credentials": {"endpoint": "http://192.0.2.1:9"}})
    assert r.status == 422 and r.body["error"]["details"]["field"] == "credentials.apisecret", r.body
    assert h.get(f"/api/v2/clouds/{cloud['id']}").body["data"]["config"]["endpoint"] == moto.url
    # with the secret given again, the move is checked like a new cloud
    r = h.put(f"/api/v2/clouds/{cloud['id']}", {"credentials": {"endpoint": moto.url + "/",
                                                                 "apisecret": SECRET_KEY}})
    assert r.status == 200, r.body


def test_a_wrong_secret_is_refused_in_words(controller: Controller, moto: MotoServer) -> None:
    import boto3

    h = controller.session()
    moto.reset()
    try:
        # the user and its key first, then every call checked: "the first 3 calls are free"
        # counted the module's controller polling its other cloud meanwhile too (a CI flake)
        iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto.url,
                           aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        iam.create_user(UserName="ops")
        iam.put_user_policy(UserName="ops", PolicyName="all", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="ops")["AccessKey"]
        moto.enforce_auth()
        wrong = "wrong-secret-never-shown"
        r = h.post("/api/v2/clouds", {"name": "Wrong", "provider": "amazon", "credentials": {
            "apikey": key["AccessKeyId"], "apisecret": wrong, "region": "us-east-1",
            "endpoint": moto.url}})
        assert r.status == 422 and r.body["error"]["code"] == "provider_auth", r.body
        assert r.body["error"]["details"]["field"] == "credentials.apisecret", r.body
        assert "secret does not match" in r.body["error"]["message"]
        assert "refused" in r.body["error"]["message"] and wrong not in str(r.body)
        r = h.post("/api/v2/clouds", {"name": "Unknown", "provider": "amazon", "credentials": {
            "apikey": "AKIAUNKNOWNUNKNOWN00", "apisecret": wrong, "region": "us-east-1",
            "endpoint": moto.url}})
        assert r.status == 422 and r.body["error"]["details"]["field"] == "credentials.apikey"
        assert "API key is not known" in r.body["error"]["message"], r.body
        r = h.post("/api/v2/clouds", {"name": "Right", "provider": "amazon", "credentials": {
            "apikey": key["AccessKeyId"], "apisecret": key["SecretAccessKey"],
            "region": "us-east-1", "endpoint": moto.url}})
        assert r.status == 201, r.body
    finally:
        moto.reset()


def test_edit_records_and_rename_resources(aws: tuple[Http, dict[str, Any]]) -> None:
    h, cloud = aws
    cid = cloud["id"]
    r = h.post("/api/v2/zones", {"cloud": cid, "domain": "edit.example"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cid)
    [zone] = [z for z in h.get(f"/api/v2/zones?cloud={cid}").body["data"] if z["domain"] == "edit.example"]
    r = h.post(f"/api/v2/zones/{zone['id']}/records", {"name": "api", "type": "A", "data": "10.0.0.1"})
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    poll(h, cid)
    [rec] = [x for x in h.get(f"/api/v2/zones/{zone['id']}/records").body["data"] if x["type"] == "A"]
    r = h.put(f"/api/v2/zones/{zone['id']}/records/{rec['id']}", {"data": "10.0.0.2", "ttl": 120})
    assert r.status == 202 and wait_job(h, r.body["job_id"])["status"] == "succeeded", r.body
    poll(h, cid)
    live = [x for x in h.get(f"/api/v2/zones/{zone['id']}/records").body["data"]
            if x["type"] == "A" and not x["missing_since"]]
    assert [(x["name"], x["rdata"], x["ttl"]) for x in live] == [(rec["name"], ["10.0.0.2"], 120)]
    assert audit(h, "record.edit", rec["id"])
    # renaming in Overcast (Mist's edit_zone: ?name=) survives polls
    r = h.put(f"/api/v2/zones/{zone['id']}?name=Edit%20zone")
    assert r.status == 200 and r.body["data"]["name"] == "Edit zone", r.body
    poll(h, cid)
    z = h.get(f"/api/v2/zones/{zone['id']}").body["data"]
    assert z["name"] == "Edit zone" and z["domain"] == "edit.example"
    assert audit(h, "zone.edit", zone["id"])
    # failures: nothing changes
    assert h.put("/api/v2/zones/nope?name=x").status == 404
    assert h.put(f"/api/v2/zones/{zone['id']}", {"name": "x" * 201}).status == 422
    assert h.put(f"/api/v2/zones/{zone['id']}", {"surprise": 1}).status == 422
    assert h.put(f"/api/v2/zones/{zone['id']}/records/nope", {"data": "10.0.0.9"}).status == 404
    r = h.put(f"/api/v2/zones/{zone['id']}/records/{rec['id']}", {"type": "BOGUS"})
    assert r.status == 422
    assert h.get(f"/api/v2/zones/{zone['id']}").body["data"]["name"] == "Edit zone"
