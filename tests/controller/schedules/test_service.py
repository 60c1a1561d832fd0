"""Adding and editing schedules: every bad input is a 400 naming the field (and, for cron
text, the position); names are unique; edits keep what they do not name and recompute the
timing; other organisations see nothing; a machine's expiration is a schedule of its own,
set, replaced and cleared with the machine's field in one audited change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.accounts.model import Principal
from controller.errors import BadRequest, Conflict, NotFound, OvercastError
from controller.events.model import SYSTEM
from controller.listing import parse_query
from controller.schedules.when import parse_when
from controller.timeutil import iso
from tests.controller.schedules.conftest import T0, World

NOTIFY = [{"action_type": "notify", "emails": ["ops@example.com"]}]
CRON = {"schedule_type": "crontab", "minute": "*/5", "hour": "*", "day_of_month": "*",
        "month_of_year": "*", "day_of_week": "*"}


def refused(w: World, **body: Any) -> BadRequest:
    body.setdefault("actions", NOTIFY)
    body.setdefault("when", {"schedule_type": "interval", "every": 10, "period": "minutes"})
    with pytest.raises(BadRequest) as e:
        w.add(**body)
    assert e.value.status == 400
    return e.value


def test_bad_input_names_the_field_and_the_position(world: World) -> None:
    w = world
    e = refused(w, when=dict(CRON, hour="7-25"))
    assert e.details == {"field": "when.hour", "position": 3}
    assert "25 is out of range 0-23" in e.message
    e = refused(w, when={"schedule_type": "crontab", "expression": "*/5 * * JAN-FOO *"})
    assert e.details["field"] == "when.expression" and e.details["position"] == 13
    assert e.details["part"] == "month_of_year"
    e = refused(w, when={"schedule_type": "crontab", "expression": "0 0 31 2 *"})
    assert "never happens" in e.message
    e = refused(w, when={"schedule_type": "interval", "every": 0, "period": "minutes"})
    assert e.details["field"] == "when.every"
    e = refused(w, when={"schedule_type": "interval", "every": 5, "period": "weeks"})
    assert e.details["field"] == "when.period"
    e = refused(w, when={"schedule_type": "one_off", "datetime": iso(T0 - 60)})
    assert e.details["field"] == "when.datetime" and "in the past" in e.message
    e = refused(w, when={"schedule_type": "one_off", "datetime": "next tuesday"})
    assert e.details["field"] == "when.datetime"
    e = refused(w, when={"schedule_type": "sometimes"})
    assert e.details["field"] == "when.schedule_type"
    e = refused(w, when=dict(CRON, timezone="Mars/Olympus"))
    assert e.details["field"] == "when.timezone"
    e = refused(w, actions=[{"action_type": "run_script", "script": "nope"}],
                selectors=[{"type": "tags", "include": ["a"]}])
    assert e.details["field"] == "actions[0].script" and "no script 'nope'" in e.message
    e = refused(w, actions=[{"action_type": "stop"}])
    assert e.details["field"] == "selectors"
    e = refused(w, actions=[{"action_type": "stop"}], selectors=[{"type": "machines",
                                                                  "ids": ["ghost"]}])
    assert e.details["field"] == "selectors[0].ids[0]"
    e = refused(w, actions=[{"action_type": "notify", "emails": ["not-an-address"]}])
    assert e.details["field"] == "actions[0].emails[0]"
    e = refused(w, actions=[{"action_type": "webhook", "method": "post", "url": "http://x"}])
    assert e.details["field"] == "actions[0].action_type"
    e = refused(w, actions=[])
    assert e.details["field"] == "actions"
    # a pattern RE2 (linear time) does not take: look-ahead, back-references
    e = refused(w, selectors=[{"type": "field", "field": "name", "operator": "regex",
                               "value": "web(?=-prod)"}])
    assert e.details == {"field": "selectors[0].value"} and "RE2" in e.message
    e = refused(w, max_run_count=0)
    assert e.details["field"] == "max_run_count"
    e = refused(w, expires=iso(T0 - 1))
    assert e.details["field"] == "expires"
    e = refused(w, missed="sometimes")
    assert e.details["field"] == "missed"
    e = refused(w, colour="blue")
    assert e.details["field"] == "colour"
    with pytest.raises(BadRequest) as e2:  # under the operator's schedule_min_interval
        parse_when({"schedule_type": "interval", "every": 30, "period": "seconds"}, T0, 60)
    assert e2.value.details["field"] == "when.every" and "at least 60" in e2.value.message


def test_names_are_unique_and_edits_keep_the_rest(world: World) -> None:
    w = world
    s = w.add(name="nightly", when=CRON, actions=NOTIFY, description="d", tags={"team": "ops"})
    assert s["next_run"] == iso(T0 - T0 % 300 + 300)
    with pytest.raises(Conflict):
        w.add(name="nightly", when=CRON, actions=NOTIFY)
    w.clock.now += 1000
    edited = w.services.schedules.edit(w.p, w.actor, s["id"], {
        "when": {"schedule_type": "interval", "every": 2, "period": "hours"}})
    assert edited["description"] == "d" and edited["tags"] == {"team": "ops"}
    assert edited["next_run"] == iso(T0 + 1000 + 7200)
    # read back and sent again: the crontab's expression and fields together are fine
    again = w.services.schedules.edit(w.p, w.actor, s["id"], {"when": dict(
        CRON, expression="*/5 * * * *")})
    assert again["when"]["schedule_type"] == "crontab"
    with pytest.raises(BadRequest):
        w.services.schedules.edit(w.p, w.actor, s["id"], {"when": dict(
            CRON, expression="*/6 * * * *")})
    w.services.schedules.delete(w.p, w.actor, "nightly")
    with pytest.raises(NotFound):
        w.services.schedules.get(w.p, s["id"])


def test_another_organisation_sees_nothing(world: World) -> None:
    import asyncio

    w = world
    s = w.add(name="ours", when=CRON, actions=NOTIFY)
    user, org = asyncio.run(w.services.accounts.create_user(
        SYSTEM, "other@example.com", "a long enough password", org_name="Other"))
    them = Principal(user, org, "owner", "session", "s2")
    for call in (lambda: w.services.schedules.get(them, s["id"]),
                 lambda: w.services.schedules.edit(them, them.actor(), s["id"], {"name": "x"}),
                 lambda: w.services.schedules.delete(them, them.actor(), "ours"),
                 lambda: w.services.schedules.runs(them, s["id"], parse_query({}))):
        with pytest.raises(NotFound):
            call()
    assert w.services.schedules.list_schedules(them, parse_query({}))[0] == []
    w.machine("m1", "web1")
    with pytest.raises(BadRequest):  # our machine is no machine of theirs
        w.services.schedules.add(them, them.actor(), {
            "when": CRON, "actions": [{"action_type": "stop"}],
            "selectors": [{"type": "machines", "ids": ["m1"]}]})


def _kvm_machine(w: World, mid: str = "vm1", agents: bool = False) -> None:
    cloud: dict[str, Any] = {"id": "c1", "name": "lab", "provider": "kvm", "config": {}}
    if agents:
        cloud = {"id": "c1", "name": "Agents", "provider": "other", "agents": True}
    w.services.store.put(f"cloud/{w.org}/c1", json.dumps(cloud).encode())
    w.machine(mid, "guest")


async def test_machine_expiration_is_a_schedule_set_and_cleared_with_the_machine(
        world: World) -> None:
    w = world
    _kvm_machine(w)
    exp = w.services.expirations
    field = exp.set(w.p, w.actor, "vm1", {"date": iso(T0 + 3600), "action": "stop",
                                          "notify": 600, "notify_msg": "save your work"})
    assert isinstance(field, dict) and field["action"] == "stop" and field["notify"] == 600
    assert w.services.machines.get(w.p, "vm1")["expiration"] == field
    sched = w.services.schedules.get(w.p, field["id"])
    assert sched["expiration_for"] == "vm1" and sched["next_run"] == iso(T0 + 3600)
    assert sched["selectors"] == [{"type": "machines", "ids": ["vm1"]}]
    assert sched["actions"] == [{"action_type": "stop"}] and sched["missed"] == "run_once"
    with pytest.raises(Conflict):  # edited through the machine only
        w.services.schedules.edit(w.p, w.actor, field["id"], {"name": "x"})
    # Mist's create-machine shape; replaces the first
    field2 = exp.set(w.p, w.actor, "vm1", {"date": iso(T0 + 7200), "action": "destroy",
                                           "notify": {"period": "minutes", "value": 5}})
    assert isinstance(field2, dict) and field2["id"] == field["id"] and field2["notify"] == 300
    w.services.scheduler.start()
    await w.step(7200 - 301)
    assert w.mail.sent == []
    await w.step(2)
    assert len(w.mail.sent) == 1 and "guest expires" in w.mail.sent[0]["subject"]
    assert "destroyed" in w.mail.sent[0]["text"]
    for bad, f in (({"date": iso(T0), "action": "stop"}, "expiration.date"),
                   ({"date": iso(T0 + 9999), "action": "explode"}, "expiration.action"),
                   ({"date": iso(T0 + 9999), "action": "stop", "notify": -1},
                    "expiration.notify")):
        with pytest.raises(BadRequest) as e:
            exp.set(w.p, w.actor, "vm1", bad)
        assert e.value.details["field"] == f
    assert exp.set(w.p, w.actor, "vm1", None) == ""
    assert w.services.machines.get(w.p, "vm1")["expiration"] == ""
    with pytest.raises(NotFound):
        w.services.schedules.get(w.p, field["id"])
    entries = [json.loads(v) for _, v in w.services.store.scan("audit/")]
    assert [e["details"].get("cleared", False) for e in entries
            if e["action"] == "machine.expiration"] == [False, False, True]


def test_an_agent_host_cannot_expire(world: World) -> None:
    w = world
    _kvm_machine(w, agents=True)
    with pytest.raises(OvercastError) as e:
        w.services.expirations.set(w.p, w.actor, "vm1", {"date": iso(T0 + 60), "action": "stop"})
    assert e.value.status == 422


def test_deleting_an_expiration_schedule_clears_the_machine(world: World) -> None:
    w = world
    _kvm_machine(w)
    field = w.services.expirations.set(w.p, w.actor, "vm1", {"date": iso(T0 + 60),
                                                             "action": "destroy"})
    assert isinstance(field, dict) and field["notify"] == 0
    w.services.schedules.delete(w.p, w.actor, field["id"])
    assert w.services.machines.get(w.p, "vm1")["expiration"] == ""


async def test_an_edit_of_what_runs_makes_the_editor_the_owner(world: World) -> None:
    """A member who changes another's schedule's actions or selectors takes it over: its runs
    act as them (their rights, their name in the audit log), never as the one who made it;
    other edits leave the owner. The audit entry names the old and the new owner."""
    import asyncio

    w = world
    s = w.add(name="shared", when={"schedule_type": "interval", "every": 10, "period": "minutes"},
              actions=NOTIFY)
    assert s["owned_by"] == "owner@example.com"
    user, org = await w.services.accounts.create_user(
        SYSTEM, "member@example.com", "a long enough password", org_name="Acme")
    assert org["id"] == w.org
    member = Principal(user, org, "member", "session", "s2")
    svc = w.services.schedules
    assert svc.edit(member, member.actor(), s["id"], {"description": "d"})["owned_by"] == (
        "owner@example.com")
    edited = svc.edit(member, member.actor(), s["id"], {
        "actions": [{"action_type": "notify", "emails": ["ops2@example.com"]}]})
    assert edited["owned_by"] == "member@example.com"
    assert edited["created_by"] == "owner@example.com"
    entries = [json.loads(v) for _, v in w.services.store.scan("audit/")]
    [edit] = [e for e in entries if e["action"] == "schedule.edit" and "actions" in
              e["details"]["changes"]]
    assert edit["details"]["changes"]["owned_by"] == {"from": "owner@example.com",
                                                       "to": "member@example.com"}
    # the runs act as the new owner
    owner, actor = w.services.scheduler.owner(w.org, json.loads(
        w.services.store.get(f"schedule/{w.org}/{s['id']}") or b"{}"))
    assert owner.user_id == user["id"] and actor.email == "member@example.com"
    w.services.scheduler.start()
    w.clock.now += 600
    assert w.services.scheduler.tick() == 1
    await w.services.scheduler.drain()
    await asyncio.sleep(0)
    entries = [json.loads(v) for _, v in w.services.store.scan("audit/")]
    [run] = [e for e in entries if e["action"] == "schedule.run"]
    assert run["actor"]["id"] == user["id"] and run["actor"]["via"] == "schedule"
    # selectors too; and the owner taking it back
    w.machine("m1", "web1")
    back = svc.edit(w.p, w.actor, s["id"], {"selectors": [{"type": "machines", "ids": ["m1"]}]})
    assert back["owned_by"] == "owner@example.com"
