"""Rules end to end through the REST API of a real controller, with a real SMTP server
(aiosmtpd), a real webhook receiver and a DigitalOcean stand-in (tests/support): a rule on
"machine destroyed" e-mails and calls a webhook with the incident; a rule on "machine
stopped" starts the machine again (a machine action); an SMTP server and a webhook that are
down are retried with the failure visible on the incident, and nothing is lost across a
restart; repeated notifications are throttled; bad input is refused with the status a
client can act on; organisations do not see each other's rules, incidents or notifications;
all of it is in the audit log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support.agents import wait_for as wait
from tests.support.clouds import audit, poll, wait_job
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http
from tests.support.fake_digitalocean import FakeServer, start_fake_digitalocean
from tests.support.notify import SmtpSink, WebhookSink, free_port

FAST = {"OVERCAST_NOTIFY_RETRY_BASE": "1", "OVERCAST_NOTIFY_RETRY_MAX": "2",
        "OVERCAST_SMTP_HOST": "127.0.0.1", "OVERCAST_SMTP_SECURITY": "none",
        "OVERCAST_SMTP_FROM": "overcast@example.com"}
EVERY_SECOND = {"schedule_type": "interval", "every": 1, "period": "seconds"}


def logs_rule(name: str, target: str, actions: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {"name": name, "when": EVERY_SECOND, "actions": actions, **more,
            "conditions": [{"data_type": "logs", "window": {"start": 1, "period": "minutes"},
                            "query": {"target": target, "operator": "ge", "threshold": 1,
                                      "aggregation": "count"}}]}


def incidents(h: Http, **params: str) -> list[dict[str, Any]]:
    r = h.get(f"/api/v2/incidents?{urlencode(params)}")
    assert r.status == 200, r.body
    data: list[dict[str, Any]] = r.body["data"]
    return data


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    s = SmtpSink().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def hook() -> Iterator[WebhookSink]:
    s = WebhookSink().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory, smtp: SmtpSink) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("rules"), {**FAST, "OVERCAST_SMTP_PORT": str(smtp.port)})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def do_api() -> Iterator[FakeServer]:
    s = start_fake_digitalocean()
    yield s
    s.stop()


def test_machine_destroyed_and_stopped_rules(ctl: Controller, smtp: SmtpSink, hook: WebhookSink,
                                             do_api: FakeServer) -> None:
    h = ctl.session()
    r = h.post("/api/v2/clouds", {"name": "DO", "provider": "digitalocean",
                                  "credentials": {"token": do_api.token, "endpoint": do_api.url}})
    assert r.status == 201, r.body
    cloud = r.body["data"]["id"]
    poll(h, cloud)
    ids = []
    for name in ("web-1", "web-2"):
        r = h.post("/api/v2/machines", {"cloud": cloud, "name": name, "size": "s-1vcpu-1gb",
                                        "image": "ubuntu-22-04-x64", "location": "nyc3"})
        ids.append(wait_job(h, r.body["job_id"])["result"][0]["id"])
    poll(h, cloud)
    poll(h, cloud)
    web1, web2 = ids
    r = h.post("/api/v2/rules", logs_rule(
        "destroyed", "action:machine.destroy outcome:success",
        [{"action_type": "notify", "emails": ["ops@example.com"]},
         {"action_type": "webhook", "url": hook.url, "method": "post",
          "headers": {"X-Api-Key": "k-123", "X-Team": "ops"}, "json": {"source": "overcast"}}]))
    assert r.status == 201, r.body
    destroyed = r.body["data"]
    r = h.post("/api/v2/rules", logs_rule("restart", "type:request and action:stop_machine",
                                          [{"action_type": "start"}],
                                          selectors=[{"type": "machines", "ids": [web2]}]))
    assert r.status == 201, r.body
    # web-2 stopped by hand: the rule starts it again
    r = h.post(f"/api/v2/machines/{web2}/actions/stop")
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    [inc] = wait(lambda: incidents(h, rule="restart", state="firing"), 20, "the restart incident")
    assert inc["machine"] == web2 and inc["machine_name"] == "web-2" and inc["value"] == 1
    started = wait(lambda: [e for e in audit(h, "machine.start", web2) if e["outcome"] == "success"],
                   30, "the rule's start job")
    assert started[0]["actor"]["id"].startswith("rule:") and started[0]["actor"]["kind"] == "system"
    acts = wait(lambda: h.get(f"/api/v2/incidents/{inc['id']}").body["data"]["actions"], 10, "actions")
    assert acts[0]["action_type"] == "start" and acts[0]["status"] == "started" and acts[0]["job"]
    poll(h, cloud)
    poll(h, cloud)
    assert h.get(f"/api/v2/machines/{web2}").body["data"]["state"] == "running"
    # web-1 destroyed: an e-mail and a webhook with the incident
    r = h.post(f"/api/v2/machines/{web1}/actions/destroy")
    assert wait_job(h, r.body["job_id"])["status"] == "succeeded"
    [inc] = wait(lambda: incidents(h, rule=destroyed["id"], state="firing"), 20, "the incident")
    assert inc["machine"] == web1 and inc["rule_name"] == "destroyed"
    msgs = smtp.wait(1)
    [msg] = [m for m in msgs if "destroyed" in str(m["Subject"])]
    assert str(msg["Subject"]) == "[Overcast] FIRING: destroyed on web-1"
    assert msg["To"] == "ops@example.com" and msg["From"] == "overcast@example.com"
    body = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert f"/api/v2/incidents/{inc['id']}" in body and "count(action:machine.destroy" in body
    [hit] = hook.wait(1)
    assert hit.headers["X-Api-Key"] == "k-123" and hit.method == "POST"
    payload = hit.json()
    assert payload["source"] == "overcast" and payload["event"] == "firing"
    assert payload["incident"]["id"] == inc["id"] and payload["incident"]["machine"] == web1
    assert payload["rule"] == {"id": destroyed["id"], "name": "destroyed"}
    full = wait(lambda: (d := h.get(f"/api/v2/incidents/{inc['id']}").body["data"])
                and all(n["status"] == "sent" for n in d["notifications"]) and len(d["notifications"]) == 2
                and d, 20, "notifications sent")
    assert {n["kind"] for n in full["notifications"]} == {"email", "webhook"}
    [wh] = [n for n in full["notifications"] if n["kind"] == "webhook"]
    assert wh["headers"] == {"X-Api-Key": "***", "X-Team": "ops"}
    assert "k-123" not in str(h.get("/api/v2/logs?limit=1000").body)
    assert "k-123" not in str(h.get(f"/api/v2/rules/{destroyed['id']}").body)
    for action in ("rule.add", "incident.fire", "notification.queue", "notification.send", "machine.start"):
        assert audit(h, action), action


def test_smtp_and_webhook_down_retried_visible_nothing_lost(tmp_path: Path) -> None:
    smtp_port, hook_port = free_port(), free_port()
    c = Controller(tmp_path, {**FAST, "OVERCAST_SMTP_PORT": str(smtp_port),
                              "OVERCAST_NOTIFY_MAX_ATTEMPTS": "50"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    c.start()
    try:
        h = c.session()
        url = f"http://127.0.0.1:{hook_port}/hook"
        r = h.post("/api/v2/rules", logs_rule("scripts", "action:script.add", [
            {"action_type": "notify", "emails": ["ops@example.com"]},
            {"action_type": "webhook", "url": url}]))
        assert r.status == 201, r.body
        r = h.post("/api/v2/scripts", {"name": "s", "exec_type": "executable",
                                       "location_type": "inline", "script": "#!/bin/sh\ntrue\n"})
        assert r.status == 201, r.body
        [inc] = wait(lambda: incidents(h, state="firing"), 20, "the incident")

        def failing() -> list[dict[str, Any]] | None:
            ns = h.get(f"/api/v2/incidents/{inc['id']}").body["data"]["notifications"]
            return ns if len(ns) == 2 and all(n["attempts"] >= 2 for n in ns) else None

        ns = wait(failing, 30, "failed attempts")
        by = {n["kind"]: n for n in ns}
        assert by["email"]["status"] == "pending" and "refused" in by["email"]["last_error"].lower()
        assert by["webhook"]["status"] == "pending"
        assert by["webhook"]["last_error"].startswith("cannot connect to 127.0.0.1")
        assert all(not res["ok"] for res in by["email"]["results"])
        assert audit(h, "notification.attempt")
        listed = h.get("/api/v2/notifications?status=pending").body["data"]
        assert {n["id"] for n in listed} == {n["id"] for n in ns}
        # the controller stops and starts again: what waits is still there, and sent once the
        # SMTP server and the webhook's receiver answer
        c.stop()
        c.start()
        smtp, hook = SmtpSink(port=smtp_port).start(), WebhookSink(port=hook_port).start()
        try:
            h = c.session()
            wait(lambda: all(n["status"] == "sent" for n in
                             h.get(f"/api/v2/incidents/{inc['id']}").body["data"]["notifications"]),
                 30, "delivery after the restart")
            assert len(smtp.wait(1)) == 1 and len(hook.wait(1)) == 1
            time.sleep(1.5)
            assert len(smtp.messages) == 1 and len(hook.hits) == 1  # once each
        finally:
            smtp.stop()
            hook.stop()
        # a failed one can be retried by hand
        r = h.post("/api/v2/notifications/" + ns[0]["id"] + "/retry")
        assert r.status == 422 and "only a failed notification" in r.body["error"]["message"]
    finally:
        if c.proc is not None and c.proc.poll() is None:
            c.stop()


def test_repeat_notifications_are_throttled(ctl: Controller) -> None:
    hook = WebhookSink().start()
    try:
        h = ctl.session()
        r = h.post("/api/v2/rules", logs_rule(
            "keys", "action:key.add", [{"action_type": "webhook", "url": hook.url, "on_resolve": True}],
            notify_every={"offset": 3, "period": "seconds"}))
        assert r.status == 201, r.body
        r = h.post("/api/v2/keys", {"name": "k1", "generate": True})
        assert r.status in (200, 201), r.body
        wait(lambda: incidents(h, rule="keys", state="firing"), 20, "the incident")
        time.sleep(8)  # evaluated every second: 8 evaluations, at most 1 + 8 // 3 calls
        events = [x.json()["event"] for x in hook.hits]
        assert events[0] == "firing" and 2 <= len(events) <= 4 and set(events[1:]) == {"reminder"}
        [inc] = incidents(h, rule="keys")
        assert inc["reminders"] == len(events) - 1
    finally:
        hook.stop()


@pytest.mark.parametrize(("change", "status", "words"), [
    ({"threshold": "high"}, 400, "threshold must be a number"),
    ({"target": "cpu_usage_activ"}, 422, "unknown metric 'cpu_usage_activ'"),
    ({"target": "no_such_metric_at_all"}, 422, "unknown metric"),
    ({"operator": "over"}, 422, "operator must be one of"),
])
def test_bad_input(ctl: Controller, change: dict[str, Any], status: int, words: str) -> None:
    h = ctl.session()
    q = {"target": "system_load1", "operator": "gt", "threshold": 4, "aggregation": "avg", **change}
    r = h.post("/api/v2/rules", {"name": "bad", "conditions": [
        {"data_type": "metrics", "query": q, "window": {"start": 1, "period": "minutes"}}]})
    assert r.status == status and words in r.body["error"]["message"], r.body
    assert r.body["error"]["details"]["field"] == "conditions[0].query." + next(iter(change))


def test_local_webhooks_refused_by_default(tmp_path: Path) -> None:
    c = Controller(tmp_path, {"OVERCAST_ALLOW_LOCAL_CLOUDS": "false"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Acme")
    c.start()
    try:
        h = c.session()
        for url, setting in (("http://127.0.0.1:9/x", "allow_local_clouds"),
                             ("http://100.100.100.200/latest/meta-data/", "allow_local_clouds"),
                             ("http://10.0.0.5/hook", "allow_private_webhooks"),
                             ("http://[fd00:ec2::254]/", "allow_local_clouds")):
            r = h.post("/api/v2/rules", logs_rule("x", "action:key.add", [
                {"action_type": "webhook", "url": url}]))
            assert r.status == 403 and setting in r.body["error"]["message"], (url, r.body)
    finally:
        c.stop()


def test_webhook_urls_are_never_shown(ctl: Controller) -> None:
    """Slack's token is in the URL's path: the API, the audit log and a rule sent back as
    shown never reveal it, and the rule keeps calling the URL it was given."""
    h = ctl.session()
    slack = "https://hooks.slack.com/services/T000/B000/E2ETOKENXYZ"
    r = h.post("/api/v2/rules", logs_rule("to slack", "action:nothing.happens",
                                          [{"action_type": "webhook", "url": slack}]))
    assert r.status == 201, r.body
    rule = r.body["data"]
    assert rule["actions"][0]["url"].startswith("https://hooks.slack.com/\u2026 (")
    r = h.post(f"/api/v2/rules/{rule['id']}", {"actions": rule["actions"], "description": "again"})
    assert r.status == 200, r.body
    assert r.body["data"]["actions"][0]["url"] == rule["actions"][0]["url"]
    for path in (f"/api/v2/rules/{rule['id']}", "/api/v2/rules", "/api/v2/logs?limit=1000"):
        assert "E2ETOKENXYZ" not in str(h.get(path).body), path


def test_organisations_are_isolated(ctl: Controller) -> None:
    ctl.adduser("eve@example.com", "eve's long password", "--org", "Evil")
    admin, eve = ctl.session(), ctl.session("eve@example.com", "eve's long password")
    r = admin.post("/api/v2/rules", logs_rule("mine", "action:key.add", []))
    rid = r.body["data"]["id"]
    inc = incidents(admin)
    notes = admin.get("/api/v2/notifications").body["data"]
    assert inc and notes
    assert eve.get("/api/v2/rules").body["data"] == []
    assert eve.get("/api/v2/incidents").body["data"] == []
    assert eve.get("/api/v2/notifications").body["data"] == []
    for method, path in (("GET", f"/api/v2/rules/{rid}"), ("GET", "/api/v2/rules/mine"),
                         ("POST", f"/api/v2/rules/{rid}"), ("PATCH", f"/api/v2/rules/{rid}?name=x"),
                         ("PUT", f"/api/v2/rules/{rid}?action=disable"),
                         ("DELETE", f"/api/v2/rules/{rid}"),
                         ("GET", f"/api/v2/incidents/{inc[0]['id']}"),
                         ("GET", f"/api/v2/notifications/{notes[0]['id']}"),
                         ("POST", f"/api/v2/notifications/{notes[0]['id']}/retry")):
        r = eve.request(method, path, {} if method == "POST" and "retry" not in path else None)
        assert r.status == 404, (method, path, r.body)
    r = eve.post("/api/v2/rules", logs_rule("mine", "action:key.add", []))  # the same name
    assert r.status == 201
    assert admin.get(f"/api/v2/rules/{rid}").body["data"]["enabled"] is True
