"""Helpers for end-to-end tests of clouds through the REST API: wait for a job, poll a
cloud, find machines, read audit entries."""

from __future__ import annotations

import time
from typing import Any

from tests.support.controller import Http


def wait_job(h: Http, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = h.get(f"/api/v2/jobs/{job_id}")
        assert r.status == 200, r.body
        job: dict[str, Any] = r.body["data"]
        if job["status"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}: {job}"
        time.sleep(0.1)


def poll(h: Http, cloud_id: str) -> dict[str, Any]:
    r = h.post(f"/api/v2/clouds/{cloud_id}/actions/poll")
    assert r.status == 200, r.body
    status: dict[str, Any] = r.body["data"]
    return status


def machines(h: Http, cloud_id: str, **params: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in {"cloud": cloud_id, "limit": "1000", **params}.items())
    r = h.get(f"/api/v2/machines?{query}")
    assert r.status == 200, r.body
    data: list[dict[str, Any]] = r.body["data"]
    return data


def audit(h: Http, action: str, target: str = "") -> list[dict[str, Any]]:
    r = h.get("/api/v2/logs?limit=1000")
    assert r.status == 200, r.body
    return [e for e in r.body["data"] if e["action"] == action
            and (not target or e["target"]["id"] == target)]
