"""A crontab schedule runs a script on the hosts tagged role=web — three real agents on
three network-namespace hosts, one real controller: the first run (run_immediately) reaches
the two tagged hosts; a third host tagged afterwards is in the next run, which comes from the
cron line itself (every minute) after the controller was stopped and started again in
between: nothing lost, nothing run twice (each host's script appends a line to a file the
namespaces share), each run's record listing its job and every machine's exit code."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.clouds import audit
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, free_port
from tests.support.netns import Lab, available

why = available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(why is not None, reason=why or "")]


class World:
    def __init__(self, c: Controller, agents: list[AgentProc], tmp: Path) -> None:
        self.c, self.agents, self.tmp = c, agents, tmp

    @property
    def h(self) -> Http:
        return self.c.session()

    def machines(self, h: Http) -> dict[str, dict[str, Any]]:
        r = h.get("/api/v2/machines?limit=1000")
        assert r.status == 200, r.body
        return {m["id"]: m for m in r.body["data"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("schedlab")
    with Lab(subnet=random.randint(150, 249)) as lab:
        hosts = [lab.add_host() for _ in range(3)]
        port = free_port()
        c = Controller(tmp, {"OVERCAST_HTTP": f"{lab.gateway}:{port}",
                             "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
                             "OVERCAST_AGENT_GRACE": "5"},
                       url=f"https://{lab.gateway}:{port}")
        c.http_port = port
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "SchedLab")
        c.start()
        agents = [AgentProc(c, tmp / f"agent{i}", host=hh, hostname=f"web{i}", interval=5.0)
                  for i, hh in enumerate(hosts)]
        try:
            h = c.session()
            for i, a in enumerate(agents):
                e = a.enrol(join_token(h, tags="role=web" if i < 2 else "role=db")["token"])
                assert e.returncode == 0, e.stderr
                a.start()
            w = World(c, agents, tmp)
            wait_for(lambda: all(w.machines(h).get(a.agent_id, {}).get("state") == "running"
                                 for a in agents), 60, "three agent hosts running")
            yield w
        finally:
            for a in agents:
                a.stop()
            if c.proc is not None and c.proc.poll() is None:
                c.stop()


def _runs(h: Http, sid: str) -> list[dict[str, Any]]:
    r = h.get(f"/api/v2/schedules/{sid}/runs")
    assert r.status == 200, r.body
    return list(reversed(r.body["data"]))  # oldest first


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_cron_schedule_on_tagged_hosts_through_a_restart(world: World) -> None:
    w = world
    h = w.h
    out = w.tmp / "ran.txt"
    out.touch()
    out.chmod(0o666)
    r = h.post("/api/v2/scripts", {"name": "mark", "exec_type": "executable",
                                   "location_type": "inline",
                                   "script": f"#!/bin/sh\necho \"$(hostname)\" >> {out}\n"})
    assert r.status == 201, r.body
    # leave room before the next minute for the first run, the tag, the restart and the
    # agents coming back (they reconnect with backoff)
    second = dt.datetime.now(dt.UTC).second
    if second > 20:
        time.sleep(61 - second)
    r = h.post("/api/v2/schedules", {
        "name": "mark-web", "run_immediately": True,
        "when": {"schedule_type": "crontab", "expression": "* * * * *"},
        "selectors": [{"type": "tags", "include": ["role=web"]}],
        "actions": [{"action_type": "run_script", "script_type": "existing", "script": "mark"}]})
    assert r.status == 201, r.body
    sid = r.body["data"]["id"]
    first = wait_for(lambda: [x for x in _runs(h, sid) if x["status"] != "running"], 60,
                     "the immediate run")
    assert [x["trigger"] for x in first] == ["immediate"] and first[0]["status"] == "succeeded"
    ids = {a.agent_id: f"web{i}" for i, a in enumerate(w.agents)}
    web0, web1, web2 = (a.agent_id for a in w.agents)
    assert sorted(first[0]["machines"]) == sorted([web0, web1])
    [action] = first[0]["actions"]
    assert action["job"] and {(x["machine"], x["exit_code"]) for x in action["results"]} == {
        (web0, 0), (web1, 0)}
    assert sorted(_lines(out)) == ["web0", "web1"]
    # the third host gains the tag after the schedule was made
    r = h.post("/api/v2/tags", {"operations": [{
        "operation": "add", "tags": [{"key": "role", "value": "web"}],
        "resources": [{"resource_type": "machine", "resource_id": web2}]}]})
    assert r.status == 200, r.body
    # the controller stops and starts again before the next minute
    w.c.stop()
    w.c.start()
    h = w.h
    wait_for(lambda: all(a["connected"] for a in h.get("/api/v2/agents").body["data"]), 40,
             "the agents back")
    assert h.get(f"/api/v2/schedules/{sid}").body["data"]["total_run_count"] == 1

    def finished() -> list[dict[str, Any]]:
        got = _runs(h, sid)
        return got if len(got) >= 2 and all(x["status"] != "running" for x in got) else []

    runs = wait_for(finished, 90, "the cron run")
    assert [x["seq"] for x in runs] == [1, 2]  # nothing lost, nothing twice
    second_run = runs[1]
    assert second_run["status"] == "succeeded", second_run
    assert sorted(second_run["machines"]) == sorted([web0, web1, web2])
    assert second_run["scheduled_for"].endswith(":00Z")  # the cron minute itself
    assert sorted(_lines(out)) == ["web0", "web0", "web1", "web1", "web2"]
    results = second_run["actions"][0]["results"]
    assert {ids[x["machine"]]: x["status"] for x in results} == {
        "web0": "succeeded", "web1": "succeeded", "web2": "succeeded"}
    # every run audited once, by the owner through the schedule
    entries = audit(h, "schedule.run", sid)
    assert sorted(e["details"]["run"] for e in entries) == [1, 2]
    runs_by_owner = [e for e in audit(h, "script.run") if e["details"].get("schedule") == sid]
    assert len(runs_by_owner) == 2
    assert {e["actor"]["via"] for e in runs_by_owner} == {"schedule"}
    assert {e["actor"]["email"] for e in runs_by_owner} == {ADMIN_EMAIL}
    assert h.delete(f"/api/v2/schedules/{sid}").status == 204
