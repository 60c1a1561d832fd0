"""Schedules through the REST API and the CLI of a real controller, with a real SMTP server
(aiosmtpd) behind the notification service: bad input refused with the field (and the
position in cron text); max_run_count and expires stop a schedule; runs missed while the
controller was stopped run once, or are skipped, never many times; a machine's expiration
(libvirt's test hypervisor) e-mails its reminder, then stops the machine; other organisations
see nothing; ``overcast schedules`` end to end."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller.timeutil import iso
from tests.support.agents import wait_for
from tests.support.clouds import audit, machines, poll
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http
from tests.support.notify import SmtpSink

NOTIFY = [{"action_type": "notify", "emails": ["ops@example.com"], "subject": "tick"}]


def every(seconds: int, **more: Any) -> dict[str, Any]:
    return {"schedule_type": "interval", "every": seconds, "period": "seconds", **more}


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    s = SmtpSink().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory, smtp: SmtpSink) -> Iterator[Controller]:
    c = Controller(tmp_path_factory.mktemp("sched"), {
        "OVERCAST_SCHEDULE_MIN_INTERVAL": "1", "OVERCAST_SCHEDULE_MISFIRE_GRACE": "2",
        "OVERCAST_SMTP_HOST": "127.0.0.1", "OVERCAST_SMTP_PORT": str(smtp.port),
        "OVERCAST_SMTP_SECURITY": "none"})
    c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Sched")
    c.start()
    yield c
    if c.proc is not None and c.proc.poll() is None:
        c.stop()


def add(h: Http, **body: Any) -> dict[str, Any]:
    r = h.post("/api/v2/schedules", body)
    assert r.status == 201, r.body
    assert r.body["id"] == r.body["data"]["id"]
    return r.body["data"]  # type: ignore[no-any-return]


def runs(h: Http, sid: str) -> list[dict[str, Any]]:
    r = h.get(f"/api/v2/schedules/{sid}/runs")
    assert r.status == 200, r.body
    return list(reversed(r.body["data"]))


def test_bad_input_is_refused_naming_the_field(ctl: Controller) -> None:
    h = ctl.session()

    def refused(status: int = 400, **body: Any) -> dict[str, Any]:
        body.setdefault("actions", NOTIFY)
        r = h.post("/api/v2/schedules", body)
        assert r.status == status, r.body
        return r.body["error"]  # type: ignore[no-any-return]

    e = refused(when={"schedule_type": "crontab", "expression": "0 9 * * mon-fro"})
    assert e["code"] == "bad_request" and e["details"]["field"] == "when.expression"
    assert e["details"]["position"] == 13 and "position 13" in e["message"]
    e = refused(when={"schedule_type": "crontab", "minute": "0", "hour": "24",
                      "day_of_month": "*", "month_of_year": "*", "day_of_week": "*"})
    assert e["details"] == {"field": "when.hour", "position": 1}
    e = refused(when=every(1), actions=[{"action_type": "run_script", "script": "missing"}],
                selectors=[{"type": "tags", "include": ["role=web"]}])
    assert e["details"]["field"] == "actions[0].script"
    e = refused(when={"schedule_type": "interval", "every": 0, "period": "minutes"})
    assert e["details"]["field"] == "when.every"
    e = refused(when={"schedule_type": "one_off", "datetime": "2001-01-01T00:00:00Z"})
    assert e["details"]["field"] == "when.datetime" and "past" in e["message"]
    e = refused(when="hourly")
    assert e["details"]["field"] == "when"
    assert h.post("/api/v2/schedules", ["not", "an", "object"]).status == 422
    e = refused(when={"schedule_type": "one_off", "datetime": iso(time.time() + 60)},
                selectors=[{"type": "machines", "ids": ["nope"]}],
                actions=[{"action_type": "reboot"}])
    assert e["details"]["field"] == "selectors[0].ids[0]"
    # regexes are RE2's (linear time): look-around and back-references are refused
    e = refused(selectors=[{"type": "field", "field": "name", "operator": "regex",
                            "value": "(web)-\\1"}], when=every(60))
    assert e["details"] == {"field": "selectors[0].value"} and "RE2" in e["message"]
    assert h.get("/api/v2/schedules/nope").status == 404
    s = add(h, name="to-toggle", when=every(3600), actions=NOTIFY)
    r = h.put(f"/api/v2/schedules/{s['id']}?action=pause")
    assert r.status == 400 and r.body["error"]["details"]["field"] == "action"
    assert h.post("/api/v2/schedules", {"name": "to-toggle", "when": every(60),
                                        "actions": NOTIFY}).status == 409
    off = h.put(f"/api/v2/schedules/{s['id']}?action=disable").body["data"]
    assert off["status"] == "disabled" and off["next_run"] is None
    on = h.put("/api/v2/schedules/to-toggle?action=enable").body["data"]
    assert on["status"] == "scheduled" and on["next_run"]
    assert h.delete(f"/api/v2/schedules/{s['id']}").status == 204


def test_max_run_count_and_expires_stop_a_schedule(ctl: Controller, smtp: SmtpSink) -> None:
    h = ctl.session()
    before = len(smtp.messages)
    capped = add(h, name="capped", when=every(1, max_run_count=2), actions=NOTIFY)
    ending = add(h, name="ending", when=every(1), actions=NOTIFY, expires=iso(time.time() + 2.5))
    time.sleep(5)
    assert len(runs(h, capped["id"])) == 2 and 1 <= len(runs(h, ending["id"])) <= 2
    shown = {s["name"]: s for s in h.get("/api/v2/schedules").body["data"]}
    assert (shown["capped"]["status"], shown["capped"]["finished_reason"]) == (
        "finished", "max_run_count")
    assert (shown["ending"]["status"], shown["ending"]["finished_reason"]) == ("finished", "expired")
    n = len(runs(h, capped["id"])) + len(runs(h, ending["id"]))
    got = smtp.wait(before + n)  # each run's notify reached the SMTP server
    assert got[-1]["Subject"] == "tick" and "ops@example.com" in got[-1]["To"]
    for s in (capped, ending):
        h.delete(f"/api/v2/schedules/{s['id']}")


def test_runs_missed_while_stopped_run_once_or_are_skipped(ctl: Controller) -> None:
    h = ctl.session()
    once = add(h, name="once", when=every(2), actions=NOTIFY)
    skip = add(h, name="skip", when=every(2), actions=NOTIFY, missed="skip")
    wait_for(lambda: runs(h, once["id"]) and runs(h, skip["id"]), 10, "a first run of each")
    ctl.stop()
    time.sleep(8)  # at least three due times pass while the controller is down
    ctl.start()
    h = ctl.session()
    wait_for(lambda: [r for r in runs(h, once["id"]) if r["trigger"] == "missed"], 10,
             "the missed run")
    wait_for(lambda: [r for r in runs(h, skip["id"]) if r["status"] == "skipped"], 10,
             "the skipped record")
    for s in (once, skip):  # stop them before counting
        h.put(f"/api/v2/schedules/{s['id']}?action=disable")
    time.sleep(0.5)
    o, k = runs(h, once["id"]), runs(h, skip["id"])
    missed_once = [r for r in o if r["trigger"] == "missed"]
    assert len(missed_once) == 1 and missed_once[0]["missed"] >= 2  # one run stands for many
    assert missed_once[0]["status"] == "succeeded"
    skipped = [r for r in k if r["status"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["missed"] >= 3 and "missed: skip" in skipped[0]["reason"]
    assert not [r for r in k if r["trigger"] == "missed" and r["status"] != "skipped"]
    for got in (o, k):  # never two records for one due time, seq without gaps
        assert len({r["scheduled_for"] for r in got}) == len(got)
        assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
    assert audit(h, "schedule.skip", skip["id"])


def _kvm_guest(h: Http) -> tuple[str, dict[str, Any]]:
    r = h.post("/api/v2/clouds", {"name": "Lab KVM", "provider": "kvm",
                                  "credentials": {"uri": "test:///default"}})
    assert r.status == 201, r.body
    cid = r.body["data"]["id"]
    poll(h, cid)
    return cid, {m["name"]: m for m in machines(h, cid)}["test"]


def test_expiration_reminds_then_stops_the_machine(ctl: Controller, smtp: SmtpSink) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    h = ctl.session()
    cid, guest = _kvm_guest(h)
    assert guest["state"] == "running"
    before = len(smtp.messages)
    at = time.time() + 8
    r = h.put(f"/api/v2/machines/{guest['id']}", {"expiration": {
        "date": iso(at), "action": "stop", "notify": 5, "notify_msg": "save your work"}})
    assert r.status == 200, r.body
    exp = r.body["data"]["expiration"]
    assert exp["action"] == "stop" and exp["date"] == iso(at) and exp["notify"] == 5
    s = h.get(f"/api/v2/schedules/{exp['id']}").body["data"]
    assert s["expiration_for"] == guest["id"] and s["next_run"] == iso(at)
    mail = smtp.wait(before + 1, timeout=15)[-1]
    assert "expires" in mail["Subject"] and ADMIN_EMAIL in mail["To"]
    assert "save your work" in mail.get_content() and "stopped" in mail.get_content()
    assert time.time() < at  # the reminder came before the date

    def stopped() -> bool:
        poll(h, cid)
        return bool(h.get(f"/api/v2/machines/{guest['id']}").body["data"]["state"] == "stopped")

    wait_for(stopped, 30, "the expired machine stopped")
    [run] = wait_for(lambda: [r for r in runs(h, exp["id"]) if r["status"] != "running"], 10,
                     "the run recorded")
    assert run["status"] == "succeeded" and run["machines"] == [guest["id"]]
    stops = audit(h, "machine.stop", guest["id"])
    assert stops and stops[0]["actor"]["via"] == "schedule"
    assert stops[0]["actor"]["email"] == ADMIN_EMAIL
    assert audit(h, "schedule.remind", exp["id"])[0]["outcome"] == "success"
    # cleared: the field and its schedule go together
    r = h.put(f"/api/v2/machines/{guest['id']}", {"expiration": None})
    assert r.status == 200 and r.body["data"]["expiration"] == ""
    assert h.get(f"/api/v2/schedules/{exp['id']}").status == 404
    r = h.put(f"/api/v2/machines/{guest['id']}", {"expiration": {"date": "yesterday",
                                                                  "action": "stop"}})
    assert r.status == 400 and r.body["error"]["details"]["field"] == "expiration.date"
    r = h.put(f"/api/v2/machines/{guest['id']}", {"colour": "red"})
    assert r.status == 422
    h.post(f"/api/v2/machines/{guest['id']}/actions/start")


def test_an_edit_of_what_runs_makes_the_editor_the_owner(ctl: Controller) -> None:
    """A member who changes the actions (or selectors) of someone else's schedule takes it
    over: its runs act, and are audited, as that member; the edit's audit entry names the
    old and the new owner. Other edits leave the owner."""
    h = ctl.session()
    s = add(h, name="handover", when=every(3600), actions=NOTIFY)
    assert s["owned_by"] == ADMIN_EMAIL
    ctl.adduser("member@example.com", "a member's long password", "--org", "Sched")
    member = ctl.session("member@example.com", "a member's long password")
    r = member.patch(f"/api/v2/schedules/{s['id']}", {"description": "renamed the pager"})
    assert r.status == 200 and r.body["data"]["owned_by"] == ADMIN_EMAIL
    r = member.patch(f"/api/v2/schedules/{s['id']}", {
        "actions": [{"action_type": "notify", "emails": ["member@example.com"]}],
        "when": every(1, max_run_count=1)})
    assert r.status == 200, r.body
    assert r.body["data"]["owned_by"] == "member@example.com"
    assert r.body["data"]["created_by"] == ADMIN_EMAIL
    [edit] = [e for e in audit(h, "schedule.edit", s["id"]) if "actions" in e["details"]["changes"]]
    assert edit["details"]["changes"]["owned_by"] == {"from": ADMIN_EMAIL,
                                                       "to": "member@example.com"}
    wait_for(lambda: audit(h, "schedule.run", s["id"]), 30, "the run")
    [run] = audit(h, "schedule.run", s["id"])
    assert run["actor"]["email"] == "member@example.com" and run["actor"]["via"] == "schedule"
    h.delete(f"/api/v2/schedules/{s['id']}")


def test_other_organisations_see_nothing(ctl: Controller) -> None:
    h = ctl.session()
    s = add(h, name="private", when=every(3600), actions=NOTIFY)
    ctl.adduser("other@example.com", "another long password", "--org", "Elsewhere")
    them = ctl.session("other@example.com", "another long password")
    assert them.get(f"/api/v2/schedules/{s['id']}").status == 404
    assert them.get(f"/api/v2/schedules/{s['id']}/runs").status == 404
    assert them.patch(f"/api/v2/schedules/{s['id']}", {"name": "mine"}).status == 404
    assert them.delete(f"/api/v2/schedules/{s['id']}").status == 404
    assert them.get("/api/v2/schedules").body["data"] == []
    h.delete(f"/api/v2/schedules/{s['id']}")


Run = Callable[..., subprocess.CompletedProcess[str]]


def test_the_cli(ctl: Controller, tmp_path_factory: pytest.TempPathFactory) -> None:
    xdg = tmp_path_factory.mktemp("xdg-sched")

    def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return ctl.cli(*args, input=input, env={"XDG_CONFIG_HOME": str(xdg)})

    r = cli("login", ctl.url, "--email", ADMIN_EMAIL, "--password-stdin",
            input=ADMIN_PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    r = cli("schedules", "add", "nightly", "--cron", "0 3 * * *", "--timezone",
            "Europe/Athens", "--notify", "ops@example.com", "--max-runs", "5", "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["id"] and made["when"]["expression"] == "0 3 * * *"
    assert made["when"]["timezone"] == "Europe/Athens" and made["max_run_count"] == 5
    r = cli("schedules", "list")
    assert r.returncode == 0 and "nightly" in r.stdout and "cron 0 3 * * *" in r.stdout
    r = cli("schedules", "show", "nightly")
    assert r.returncode == 0 and "Europe/Athens" in r.stdout
    r = cli("schedules", "edit", "nightly", "--every", "2s", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["when"] == {"schedule_type": "interval", "every": 2,
                                            "period": "seconds", "max_run_count": 5}
    wait_for(lambda: json.loads(cli("schedules", "runs", "nightly", "--json").stdout), 10,
             "a run")
    r = cli("schedules", "runs", "nightly")
    assert r.returncode == 0 and "succeeded" in r.stdout
    r = cli("schedules", "disable", "nightly")
    assert r.returncode == 0 and "disabled nightly" in r.stdout
    r = cli("schedules", "enable", "nightly", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["status"] == "scheduled"
    r = cli("schedules", "add", "broken", "--cron", "61 * * * *", "--notify", "a@example.com")
    assert r.returncode == 1 and "position 1" in r.stderr and "when.expression" in r.stderr
    r = cli("schedules", "add", "nothing", "--every", "1h")
    assert r.returncode == 2 and "say what to do" in r.stderr
    r = cli("schedules", "delete", "nightly")
    assert r.returncode == 0
    assert cli("schedules", "show", "nightly").returncode == 4
