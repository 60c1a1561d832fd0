"""The issue's test: a real agent on a host made of network namespaces (sampling every
second), a rule on its CPU load; busy processes started on the host make the incident go
pending then firing, which e-mails the test SMTP server (aiosmtpd), calls the test webhook
receiver and runs a command on the host through the agent; stopping the load resolves it
(e-mail and webhook again). Then the agent is stopped: the "agent disconnected" log rule and
the organisation's "no data" rule fire; started again, the "no data" incident resolves."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support.agents import AgentProc, join_token
from tests.support.agents import wait_for as wait
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, free_port
from tests.support.netns import Host, Lab, available
from tests.support.notify import SmtpSink, WebhookSink

why = available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(why is not None, reason=why or "")]
EVERY_SECOND = {"schedule_type": "interval", "every": 1, "period": "seconds"}


class World:
    def __init__(self, c: Controller, h: Http, host: Host, agent: AgentProc, smtp: SmtpSink,
                 hook: WebhookSink) -> None:
        self.c, self.h, self.host, self.agent, self.smtp, self.hook = c, h, host, agent, smtp, hook

    def incidents(self, **params: str) -> list[dict[str, Any]]:
        r = self.h.get(f"/api/v2/incidents?{urlencode(params)}")
        assert r.status == 200, r.body
        data: list[dict[str, Any]] = r.body["data"]
        return data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("ruleslab")
    smtp, hook = SmtpSink().start(), WebhookSink().start()
    with Lab(subnet=random.randint(200, 249)) as lab:
        host = lab.add_host()
        port = free_port()
        c = Controller(tmp, {"OVERCAST_HTTP": f"{lab.gateway}:{port}",
                             "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
                             "OVERCAST_AGENT_GRACE": "5", "OVERCAST_METRIC_INTERVAL": "1",
                             "OVERCAST_SMTP_HOST": "127.0.0.1", "OVERCAST_SMTP_PORT": str(smtp.port),
                             "OVERCAST_SMTP_SECURITY": "none", "OVERCAST_NOTIFY_RETRY_BASE": "1"},
                       url=f"https://{lab.gateway}:{port}")
        c.http_port = port
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Lab")
        c.start()
        h = c.session()
        agent = AgentProc(c, tmp / "agent0", host=host, hostname="host0", interval=1.0)
        tok = join_token(h, uses=1, tags="env=lab")
        r = agent.enrol(tok["token"])
        assert r.returncode == 0, r.stderr
        agent.start()
        try:
            yield World(c, h, host, agent, smtp, hook)
        finally:
            agent.stop()
            c.stop()
            smtp.stop()
            hook.stop()


def busy(host: Host, n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(host.cmd(sys.executable, "-c", "while True: pass")) for _ in range(n)]


def test_cpu_rule_fires_notifies_runs_and_resolves(world: World, tmp_path: Path) -> None:
    h = world.h
    mid = world.agent.agent_id
    wait(lambda: h.get("/api/v2/datapoints?query=cpu_usage_active").body["data"]["data"]["result"],
         60, "CPU samples")
    marker = Path(f"/tmp/overcast-rule-{uuid.uuid4().hex[:8]}")  # noqa: S108 (the host's /tmp is ours)
    r = h.post("/api/v2/rules", {
        "name": "cpu busy", "when": EVERY_SECOND, "trigger_after": {"offset": 2, "period": "seconds"},
        "selectors": [{"type": "tags", "include": ["env=lab"]}],
        "conditions": [{"data_type": "metrics", "window": {"start": 3, "period": "seconds"},
                        "query": {"target": 'cpu_usage_active{cpu="cpu-total"}', "operator": "gt",
                                  "threshold": 80, "aggregation": "avg"}}],
        "actions": [{"action_type": "notify", "emails": ["ops@example.com"], "on_resolve": True},
                    {"action_type": "webhook", "url": world.hook.url, "on_resolve": True},
                    {"action_type": "run_script", "script_type": "inline",
                     "command": f"hostname > {marker}"}]})
    assert r.status == 201, r.body
    rule = r.body["data"]
    # wait for the host to be calm (other work on this machine may load its CPUs), then load it
    wait(lambda: not world.incidents(rule=rule["id"], state="open"), 120, "a calm host")
    before = len(world.smtp.messages), len(world.hook.hits)
    procs = busy(world.host, 3)
    try:
        [inc] = wait(lambda: world.incidents(rule=rule["id"], state="firing"), 60, "firing")
        assert inc["machine"] == mid and inc["machine_name"] == "host0" and inc["value"] > 80
        entries = h.get("/api/v2/logs?limit=1000").body["data"]
        mine = [e["action"] for e in reversed(entries) if e["target"]["id"] == inc["id"]]
        assert mine[:2] == ["incident.pending", "incident.fire"]
        msgs = wait(lambda: world.smtp.messages[before[0]:], 30, "the e-mail")
        assert str(msgs[0]["Subject"]) == "[Overcast] FIRING: cpu busy on host0"
        hits = wait(lambda: world.hook.hits[before[1]:], 30, "the webhook")
        assert hits[0].json()["event"] == "firing" and hits[0].json()["incident"]["id"] == inc["id"]
        wait(lambda: marker.exists() and marker.read_text().strip() == "host0", 60,
             "the command run on the host")
        job = wait(lambda: [a for a in h.get(f"/api/v2/incidents/{inc['id']}").body["data"]["actions"]
                            if a["action_type"] == "run_script"], 10, "the job on the incident")
        assert job[0]["status"] == "started" and job[0]["job"]
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        marker.unlink(missing_ok=True)
    [done] = wait(lambda: world.incidents(rule=rule["id"], state="resolved"), 180, "resolved")
    assert done["id"] == inc["id"] and done["reason"] == "the conditions no longer hold"
    msgs = wait(lambda: [m for m in world.smtp.messages if "RESOLVED" in str(m["Subject"])], 30,
                "the resolved e-mail")
    assert str(msgs[0]["Subject"]) == "[Overcast] RESOLVED: cpu busy on host0"
    wait(lambda: [x for x in world.hook.hits if x.json()["event"] == "resolved"], 30, "resolved webhook")
    xdg = tmp_path / "xdg"
    run = world.c.cli("login", world.c.url, "--email", ADMIN_EMAIL, "--password-stdin",
                      "--ca-fingerprint", world.c.ca_fingerprint, input=ADMIN_PASSWORD + "\n",
                      env={"XDG_CONFIG_HOME": str(xdg)})
    assert run.returncode == 0, run.stderr
    run = world.c.cli("incidents", "--rule", "cpu busy", "--json", env={"XDG_CONFIG_HOME": str(xdg)})
    assert run.returncode == 0, run.stderr
    assert [(i["id"], i["state"]) for i in json.loads(run.stdout)] == [(inc["id"], "resolved")]


def test_agent_disconnected_and_no_data(world: World) -> None:
    h = world.h
    mid = world.agent.agent_id
    wait(lambda: h.get("/api/v2/rules/nodata").status == 200, 30, "the no-data rule")
    r = h.post("/api/v2/rules/nodata", {"conditions": [{"data_type": "nodata", "window": {
        "start": 4, "period": "seconds"}}], "when": EVERY_SECOND,
        "actions": [{"action_type": "notify", "emails": ["ops@example.com"]}]})
    assert r.status == 200, r.body
    r = h.post("/api/v2/rules", {"name": "agent gone", "when": EVERY_SECOND, "conditions": [{
        "data_type": "logs", "window": {"start": 1, "period": "minutes"},
        "query": {"target": "action:agent.disconnect", "operator": "ge", "threshold": 1}}]})
    assert r.status == 201, r.body
    assert not world.incidents(rule="nodata", state="open")
    world.agent.stop()
    try:
        [gone] = wait(lambda: world.incidents(rule="agent gone", state="firing"), 30, "disconnected")
        assert gone["machine"] == mid
        [silent] = wait(lambda: world.incidents(rule="nodata", state="firing"), 30, "no data")
        assert silent["machine"] == mid and silent["value"] > 4
        wait(lambda: [m for m in world.smtp.messages if str(m["Subject"]) ==
                      "[Overcast] FIRING: no data on host0"], 30, "the no-data e-mail")
    finally:
        world.agent.start()
    [back] = wait(lambda: world.incidents(rule="nodata", state="resolved"), 60, "data again")
    assert back["id"] == silent["id"] and back["reason"] == "samples arrive again"
