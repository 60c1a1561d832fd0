"""A container host end to end through the REST API against a real Docker Engine API (podman's
API service on a unix socket): the host and its containers as a tree, create a container,
stop it and see the state change audited, destroy it and see it missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import docker_host
from tests.support.clouds import audit, machines, poll, wait_job
from tests.support.controller import Controller, Http
from tests.support.docker_host import IMAGE, SERVE, DockerHost


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerHost]:
    yield from docker_host.running_daemon(tmp_path_factory.mktemp("podman"))


def act(h: Http, mid: str, verb: str) -> None:
    r = h.post(f"/api/v2/machines/{mid}/actions/{verb}")
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"])
    assert job["status"] == "succeeded", job


def test_containers_as_machines(controller: Controller, daemon: DockerHost) -> None:
    h = controller.session()
    r = h.post("/api/v2/clouds", {"name": "Podman", "provider": "docker",
                                  "credentials": {"socket": str(daemon.socket)}})
    assert r.status == 201, r.body
    cid = r.body["data"]["id"]
    r = h.post("/api/v2/machines", {"cloud": cid, "name": "e2e-box", "image": IMAGE,
                                    "extra": {"command": SERVE, "network_mode": "none"}})
    assert r.status == 202, r.body
    job = wait_job(h, r.body["job_id"])
    assert job["status"] == "succeeded", job
    poll(h, cid)
    ms = {m["name"]: m for m in machines(h, cid)}
    box = ms["e2e-box"]
    assert box["state"] == "running" and box["parent"]
    assert box["id"] in ms_by_id(ms)[box["parent"]]["children"]
    act(h, box["id"], "stop")
    poll(h, cid)
    assert h.get(f"/api/v2/machines/{box['id']}").body["data"]["state"] == "stopped"
    assert audit(h, "machine.changed", box["id"])
    act(h, box["id"], "destroy")
    poll(h, cid)
    assert h.get(f"/api/v2/machines/{box['id']}").body["data"]["missing_since"]


def ms_by_id(ms: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(m["id"]): m for m in ms.values()}
