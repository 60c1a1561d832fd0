"""Custom metrics end to end: scripts of the library registered as metric sources through the
REST API, picked up by a real agent (a real controller and agent processes), their output in
the Prometheus text format stored as samples and read back with GET /api/v2/datapoints.

A source on a tag starts running on a machine when the machine gains the tag and stops when
it loses it; a malformed line is reported (its number and why) while the good ones are kept;
a slow script is killed at its timeout with its children; samples taken while the controller
is down are spooled by the agent and arrive after it is back."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http

QUEUES = """#!/bin/sh
# two metrics with labels, one line that is not the format, a comment
echo '# TYPE queue_depth gauge'
echo 'queue_depth{queue="mail",tier="gold"} 42'
echo 'queue_depth{queue="sms",tier="silver"} 7'
echo 'this line is not a sample'
echo 'queue_workers 3'
echo "queue_checked_at $(date +%s)"
"""


@dataclass
class World:
    c: Controller
    h: Http
    agent: AgentProc
    tmp: Path

    @property
    def aid(self) -> str:
        return self.agent.agent_id

    def vector(self, query: str) -> list[dict[str, Any]]:
        r = self.h.get(f"/api/v2/datapoints?query={query}")
        assert r.status == 200, r.body
        return r.body["data"]["data"]["result"]  # type: ignore[no-any-return]

    def source(self, sid: str) -> dict[str, Any]:
        r = self.h.get(f"/api/v2/metrics/sources/{sid}")
        assert r.status == 200, r.body
        return r.body["data"]  # type: ignore[no-any-return]

    def tag(self, operation: str) -> None:
        r = self.h.post("/api/v2/tags", {"operations": [{
            "operation": operation, "tags": [{"key": "role", "value": "queue"}],
            "resources": [{"resource_type": "machine", "resource_id": self.aid}]}]})
        assert r.status == 200, r.body


def add_script(h: Http, name: str, text: str) -> dict[str, Any]:
    r = h.post("/api/v2/scripts", {"name": name, "exec_type": "executable",
                                   "location_type": "inline", "script": text})
    assert r.status in (200, 201), r.body
    return r.body["data"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("custom")
    c = Controller(tmp / "ctl")
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Metrics")
    c.start()
    h = c.session()
    agent = AgentProc(c, tmp / "agent", hostname="ocqueue", interval=1.0)
    try:
        r = agent.enrol(join_token(h)["token"])
        assert r.returncode == 0, r.stderr
        agent.start()
        wait_for(lambda: h.get(f"/api/v2/machines/{agent.agent_id}").body.get("data", {})
                 .get("state") == "running", 30, "the agent's machine running")
        yield World(c, h, agent, tmp)
    finally:
        agent.stop()
        if c.proc is not None and c.proc.poll() is None:
            c.stop()


def test_a_source_on_a_tag_runs_once_the_machine_has_the_tag(world: World) -> None:
    h = world.h
    add_script(h, "queues", QUEUES)
    r = h.post("/api/v2/metrics/sources", {
        "name": "queues", "script": "queues",
        "selectors": [{"type": "tags", "include": ["role=queue"]}]})
    assert r.status == 201, r.body
    sid = r.body["data"]["id"]
    time.sleep(3)
    assert world.source(sid)["machines"] == [] and world.vector("queue_depth") == []
    world.tag("add")  # the machine gains the tag: its agent starts running the source
    assert world.source(sid)["machines"] == [world.aid]
    wait_for(lambda: len(world.vector('queue_depth{source="queues"}')) == 2, 30,
             "both queue_depth series")
    series = {s["metric"]["queue"]: s for s in world.vector('queue_depth{source="queues"}')}
    mail = series["mail"]["metric"]
    assert {k: mail[k] for k in ("__name__", "queue", "tier", "source", "machine_id")} == {
        "__name__": "queue_depth", "queue": "mail", "tier": "gold", "source": "queues",
        "machine_id": world.aid}
    assert series["mail"]["value"][1] == "42" and series["sms"]["value"][1] == "7"
    [workers] = world.vector(f'queue_workers{{machine_id="{world.aid}"}}')
    assert workers["value"][1] == "3"
    # the malformed line is reported, with its number, and the good ones were kept
    wait_for(lambda: world.source(sid)["status"], 20, "the source's status")
    [st] = world.source(sid)["status"]
    assert st["machine"] == world.aid and st["samples"] == 4 and st["error"] == ""
    assert st["bad_line_count"] == 1
    assert st["bad_lines"][0].startswith("line 4: "), st


def test_a_slow_script_is_killed_at_its_timeout(world: World) -> None:
    marker = world.tmp / "slow-child.pid"
    add_script(world.h, "slow", f"#!/bin/sh\necho 'early 1'\nsleep 120 &\necho $! > {marker}\n"
                                "sleep 120\necho 'late 1'\n")
    r = world.h.post("/api/v2/metrics/sources", {
        "name": "slow", "script": "slow", "timeout": 1, "interval": 30,
        "selectors": [{"type": "machines", "ids": [world.aid]}]})
    assert r.status == 201, r.body
    sid = r.body["data"]["id"]
    t0 = time.time()
    wait_for(lambda: world.source(sid)["status"], 30, "the slow source's status")
    [st] = world.source(sid)["status"]
    assert st["timed_out"] is True and "timed out after 1s" in st["error"] and st["samples"] == 0
    assert st["duration_ms"] < 5000 and time.time() - t0 < 30
    pid = int(marker.read_text())
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or
             Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z", 10,
             "the script's background child killed with it")
    assert world.vector("early") == []  # a run that timed out gives nothing
    assert world.h.delete(f"/api/v2/metrics/sources/{sid}").status == 204


def test_samples_taken_while_the_controller_is_down_arrive_after(world: World) -> None:
    wait_for(lambda: world.vector('queue_depth{queue="mail"}'), 30, "queue samples")
    world.c.stop()
    down = time.time()
    time.sleep(5)
    up = time.time()
    world.c.start()
    world.h = world.c.session()

    def runs_while_down() -> list[float]:
        """The runs the script says it made while the controller was down (their values are
        their times: a range answer also fills steps from an older sample)."""
        r = world.h.get(f'/api/v2/datapoints?query=queue_checked_at{{machine_id="{world.aid}"}}'
                        f"&start={down - 2}&end={up + 2}&step=1")
        result = r.body["data"]["data"]["result"] if r.status == 200 else []
        return sorted({float(v[1]) for v in result[0]["values"] if down + 0.5 < float(v[1]) < up - 0.5}
                      if result else set())

    # the agent comes back after its backoff (up to some seconds) and sends its spool first
    runs = wait_for(lambda: len(runs_while_down()) >= 3 and runs_while_down(), 90,
                    "the samples spooled while the controller was down")
    assert len(runs) >= 3, runs


def test_losing_the_tag_stops_the_source(world: World) -> None:
    wait_for(lambda: world.h.get(f"/api/v2/agents/{world.aid}").body["data"]["connected"], 90,
             "the agent connected")
    world.tag("remove")
    time.sleep(4)  # the change reaches the agent; what it ran before is stored
    stopped = time.time()
    time.sleep(4)
    # the time of its last run, as the script said it
    [s] = world.vector(f'queue_checked_at{{machine_id="{world.aid}"}}')
    assert float(s["value"][1]) < stopped, (s, stopped)
    # other samples still come: the agent runs on, only the source stopped
    r = world.h.get(f'/api/v2/datapoints?query=system_uptime{{machine_id="{world.aid}"}}'
                    f"&start={stopped}&end={time.time()}&step=1")
    values = {v[1] for v in r.body["data"]["data"]["result"][0]["values"]}
    assert len(values) > 1, values  # uptime moves on: new samples came in
    assert os.path.exists(world.agent.state_dir)
