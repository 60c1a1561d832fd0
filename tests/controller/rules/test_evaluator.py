"""The evaluator over a real store and TSDB, with time given: incidents go pending, firing and
resolved as the samples say; selectors are resolved at each evaluation; notifications repeat
at most every notify_every; missing data and audit entries (machine destroyed, agent
disconnected) make incidents too; disabling or deleting a rule resolves its incidents; a
restart neither loses open incidents nor fires them again; organisations never mix."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.accounts.model import MEMBER, USER, Principal
from controller.accounts.model import ORG as ORG_KIND
from controller.events.model import Actor
from controller.events.writer import Change
from controller.listing import parse_query
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.rules import feed
from controller.rules.evaluator import Evaluator
from controller.rules.incidents import Incidents
from controller.rules.model import AGENT_RECONNECT_MAX
from controller.services import Services, build_services
from controller.settings import Settings
from controller.store import open_store
from controller.store.base import Batch, Store
from controller.store.docs import dump
from controller.timeutil import iso

ORG = "o1"
P = Principal({"id": "u1", "email": "a@example.com"}, {"id": ORG, "name": "Acme"}, "owner", "token", "t1")
OTHER = Principal({"id": "u2", "email": "b@example.com"}, {"id": "o2", "name": "B"}, "owner", "token", "t2")
T0 = time.time() - 3600  # an hour ago: the test's clock starts there


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "db")
    yield s
    s.close()


@pytest.fixture
def svc(store: Store, tmp_path: Path) -> Services:
    s = build_services(Settings(data_dir=str(tmp_path), allow_local_clouds=True), store)
    for mid, org, tags in (("m1", ORG, {"env": "prod"}), ("m2", ORG, {}), ("x1", "o2", {"env": "prod"})):
        machine(store, mid, org, tags)
    return s


def machine(store: Store, mid: str, org: str, tags: dict[str, str], created: float = T0 - 86400) -> None:
    store.put(machine_key(org, mid), dump(MACHINE, {"id": mid, "name": f"host-{mid}", "agent": mid,
                                                     "tags": tags, "created": iso(created)}))


def samples(svc: Services, org: str, mid: str, metric: str, t: float, *values: float,
            every: float = 10, labels: dict[str, str] | None = None) -> None:
    """``values`` ending at time ``t``, ``every`` seconds apart."""
    b = Batch()
    n = len(values)
    svc.tsdb.add(b, org, [(metric, {**(labels or {}), "machine_id": mid}, v,
                           int((t - (n - 1 - i) * every) * 1000)) for i, v in enumerate(values)])
    svc.store.write(b)
    svc.tsdb.settle(True)


def cpu_rule(svc: Services, p: Principal = P, **over: Any) -> dict[str, Any]:
    body = {"name": "cpu", "conditions": [{"data_type": "metrics",
                                           "window": {"start": 30, "period": "seconds"},
                                           "query": {"target": 'cpu_usage_active{cpu="cpu-total"}',
                                                     "operator": "gt", "threshold": 90,
                                                     "aggregation": "avg"}}],
            "when": {"every": 10, "period": "seconds"}}
    body.update(over)
    return svc.rules.add(p, p.actor(), body)


def cpu(svc: Services, mid: str, t: float, *values: float, org: str = ORG) -> None:
    samples(svc, org, mid, "cpu_usage_active", t, *values, labels={"cpu": "cpu-total"})
    samples(svc, org, mid, "cpu_usage_active", t, *(5.0 for _ in values), labels={"cpu": "cpu0"})


def states(svc: Services, p: Principal = P) -> list[tuple[str, str, bool]]:
    data, _ = svc.incidents.list(p, parse_query({"sort": "started"}))
    return [(d["machine"], d["state"], d["fired"]) for d in data]


def test_pending_firing_resolved(svc: Services) -> None:
    cpu_rule(svc, trigger_after={"offset": 20, "period": "seconds"})
    ev = svc.evaluator
    cpu(svc, "m1", T0, 95, 97, 99)
    cpu(svc, "m2", T0, 10, 10, 10)
    assert ev.cycle(now=T0 + 1, force=True) == []
    assert states(svc) == [("m1", "pending", False)]
    cpu(svc, "m1", T0 + 10, 96)
    assert ev.cycle(now=T0 + 11, force=True) == []  # held 10 s of 20
    cpu(svc, "m1", T0 + 20, 96)
    acts = ev.cycle(now=T0 + 21, force=True)
    assert [(a.event, a.incident["machine"]) for a in acts] == [("firing", "m1")]
    inc = acts[0].incident
    assert inc["state"] == "firing" and inc["value"] == pytest.approx((97 + 99 + 96 + 96) / 4)
    assert inc["values"][0]["labels"] == {"cpu": "cpu-total"} and inc["machine_name"] == "host-m1"
    assert "avg(cpu_usage_active" in inc["condition"] and "> 90" in inc["condition"]
    cpu(svc, "m1", T0 + 30, 20, 20, 20)
    acts = ev.cycle(now=T0 + 31, force=True)
    assert [(a.event, a.incident["reason"]) for a in acts] == [("resolved", "the conditions no longer hold")]
    assert states(svc) == [("m1", "resolved", True)]
    # a pending incident whose condition ends before trigger_after resolves without firing
    cpu(svc, "m2", T0 + 40, 99, 99)
    ev.cycle(now=T0 + 41, force=True)
    cpu(svc, "m2", T0 + 70, 1, 1, 1)
    assert ev.cycle(now=T0 + 71, force=True) == []
    assert states(svc) == [("m1", "resolved", True), ("m2", "resolved", False)]
    actions = [json.loads(v)["action"] for _, v in svc.store.scan("audit/")]
    assert [a for a in actions if a.startswith("incident.")] == [
        "incident.pending", "incident.fire", "incident.resolve", "incident.pending", "incident.resolve"]
    assert svc.store.count("incopen/") == 0


def test_aggregations_and_operators(svc: Services) -> None:
    ev = svc.evaluator
    for i, (name, agg, op, thr, vals, fires) in enumerate((("all-gt", "all", "gt", 50, (60, 70, 40), False),
                                            ("all-gt2", "all", "gt", 50, (60, 70, 80), True),
                                            ("any-lt", "any", "lt", 10, (60, 5, 80), True),
                                            ("count-ge", "count", "ge", 3, (1, 2, 3), True),
                                            ("avg-le", "avg", "le", 10, (60, 5, 80), False),
                                            ("eq", "any", "eq", 5, (60, 5, 80), True),
                                            ("ne", "all", "ne", 5, (60, 5, 80), False))):
        m = f"h-{name}"
        machine(svc.store, m, ORG, {"case": name})
        samples(svc, ORG, m, "system_load1", T0, *vals)
        svc.rules.add(P, P.actor(), {"name": name, "selectors": [{"type": "tags", "include": [f"case={name}"]}],
                                     "conditions": [{"query": {"target": "system_load1", "operator": op,
                                                               "threshold": thr, "aggregation": agg},
                                                     "window": {"start": 1, "period": "minutes"}}]})
        acts = ev.cycle(now=T0 + 1 + 6 * i, force=True)  # new series are looked for every 5 s
        assert bool([a for a in acts if a.rule["name"] == name]) is fires, name


def test_selectors_resolved_at_each_evaluation(svc: Services) -> None:
    cpu_rule(svc, selectors=[{"type": "tags", "include": ["env=prod"]}])
    ev = svc.evaluator
    for m in ("m1", "m2"):
        cpu(svc, m, T0, 99, 99, 99)
    assert [a.incident["machine"] for a in ev.cycle(now=T0 + 1, force=True)] == ["m1"]
    machine(svc.store, "m2", ORG, {"env": "prod"})  # tagged later: included next time
    cpu(svc, "m2", T0 + 10, 99)
    assert [a.incident["machine"] for a in ev.cycle(now=T0 + 11, force=True)] == ["m2"]
    machine(svc.store, "m1", ORG, {"env": "dev"})  # untagged: its incident resolves
    cpu(svc, "m1", T0 + 20, 99)
    cpu(svc, "m2", T0 + 20, 99)
    acts = ev.cycle(now=T0 + 21, force=True)
    assert [(a.incident["machine"], a.event, a.incident["reason"]) for a in acts] == [
        ("m1", "resolved", "the machine is no longer selected")]


def test_machines_cache_keeps_what_rules_read(svc: Services) -> None:
    """The evaluator holds every machine of the organisation between rounds: it keeps the
    fields selectors and incidents read, not the agent's facts, and sees every change."""
    facts = {"filesystems": [{"path": f"/d{i}", "total_bytes": i} for i in range(50)],
             "interfaces": {"eth0": {"addresses": ["10.0.0.1"]}}}
    svc.store.put(machine_key(ORG, "m1"), dump(MACHINE, {
        "id": "m1", "name": "web-1", "agent": "m1", "tags": {"env": "prod"}, "size": "big",
        "private_ips": ["10.0.0.1"], "agent_facts": facts, "extra": {"k": "v"},
        "key_associations": [{"key": "k1"}], "created": iso(T0 - 86400)}))
    cpu_rule(svc, selectors=[{"type": "field", "field": "size", "operator": "eq", "value": "big"},
                             {"type": "tags", "include": ["env=prod"]}])
    cpu(svc, "m1", T0, 99, 99, 99)
    ev = svc.evaluator
    assert [a.incident["machine_name"] for a in ev.cycle(now=T0 + 1, force=True)] == ["web-1"]
    doc = ev.machines(ORG, T0 + 1).docs["m1"]
    assert doc["tags"] == {"env": "prod"} and doc["private_ips"] == ["10.0.0.1"]
    assert not {"agent_facts", "extra", "key_associations"} & set(doc)
    # a change anywhere in the stored document is seen at the next round
    svc.store.put(machine_key(ORG, "m1"), dump(MACHINE, {
        "id": "m1", "name": "web-1", "agent": "m1", "tags": {"env": "prod"}, "size": "small",
        "agent_facts": facts, "created": iso(T0 - 86400)}))
    cpu(svc, "m1", T0 + 10, 99)
    acts = ev.cycle(now=T0 + 11, force=True)
    assert [(a.event, a.incident["reason"]) for a in acts] == [
        ("resolved", "the machine is no longer selected")]


def test_notifications_repeat_at_most_every_notify_every(svc: Services) -> None:
    cpu_rule(svc, notify_every={"offset": 60, "period": "seconds"})
    ev = svc.evaluator
    events = []
    for k in range(13):  # 2 minutes of evaluations every 10 s while it stays high
        cpu(svc, "m1", T0 + k * 10, 99, 99, 99)
        events += [a.event for a in ev.cycle(now=T0 + k * 10 + 1, force=True)]
    assert events == ["firing", "reminder", "reminder"]
    inc = svc.incidents.list(P, parse_query({}))[0][0]
    assert inc["reminders"] == 2
    # it resolves, then fires again within notify_every of the last notification: quiet
    cpu(svc, "m1", T0 + 130, 1, 1, 1)
    resolved = ev.cycle(now=T0 + 131, force=True)
    assert [(a.event, a.quiet) for a in resolved] == [("resolved", False)]
    cpu(svc, "m1", T0 + 160, 99, 99, 99)
    again = ev.cycle(now=T0 + 161, force=True)  # 40 s after the last reminder
    assert [(a.event, a.quiet) for a in again] == [("firing", True)]
    assert svc.incidents.list(P, parse_query({"state": "firing"}))[0][0]["throttled"] is True


def test_no_data(svc: Services) -> None:
    svc.rules.ensure_nodata(ORG)
    svc.rules.edit(P, P.actor(), "nodata", {"conditions": [{"data_type": "nodata",
                                                          "window": {"start": 30, "period": "seconds"}}]})
    ev = svc.evaluator
    ev.started = T0 - 3600  # the controller has been up for an hour (no start-up grace)
    samples(svc, ORG, "m1", "system_uptime", T0, 1, 2, 3)
    samples(svc, ORG, "m2", "system_uptime", T0, 1, 2, 3)
    assert ev.cycle(now=T0 + 5, force=True) == []
    samples(svc, ORG, "m2", "system_uptime", T0 + 40, 4)  # m1 goes silent
    acts = ev.cycle(now=T0 + 45, force=True)
    assert [(a.incident["machine"], a.event) for a in acts] == [("m1", "firing")]
    assert acts[0].incident["value"] == pytest.approx(45, abs=0.01)
    samples(svc, ORG, "m1", "system_uptime", T0 + 50, 5)
    samples(svc, ORG, "m2", "system_uptime", T0 + 50, 5)
    acts = ev.cycle(now=T0 + 51, force=True)
    assert [(a.incident["machine"], a.event, a.incident["reason"]) for a in acts] == [
        ("m1", "resolved", "samples arrive again")]
    # a monitored machine that never sent anything counts from when it was made
    machine(svc.store, "m3", ORG, {}, created=T0)
    ev.machines(ORG, T0 + 52).read_at = 0  # look at the machines again now
    samples(svc, ORG, "m1", "system_uptime", T0 + 60, 6)
    samples(svc, ORG, "m2", "system_uptime", T0 + 60, 6)
    assert [a.incident["machine"] for a in ev.cycle(now=T0 + 61, force=True)] == ["m3"]
    assert svc.incidents.list(OTHER, parse_query({}))[0] == []
    # a revoked agent's host is silent on purpose: its incident resolves, none opens again
    svc.store.put(f"agent/{ORG}/m3", json.dumps({"id": "m3", "revoked": True}).encode())
    acts = ev.cycle(now=T0 + 62, force=True)
    assert [(a.incident["machine"], a.event, a.incident["reason"]) for a in acts] == [
        ("m3", "resolved", "its agent was revoked")]


def audit(svc: Services, org: str, action: str, kind: str, target: str) -> None:
    svc.writer.commit(Actor(kind="user", id="u1", org=org, via="rest"),
                      Change(action, org=org, target_kind=kind, target_id=target))


def test_log_rules_machine_destroyed_and_agent_disconnected(svc: Services) -> None:
    svc.rules.add(P, P.actor(), {"name": "destroyed", "conditions": [{
        "data_type": "logs", "window": {"start": 10, "period": "minutes"},
        "query": {"target": "type:request and action:destroy_machine", "operator": "ge",
                  "threshold": 1, "aggregation": "count"}}]})
    svc.rules.add(P, P.actor(), {"name": "disconnected", "conditions": [{
        "data_type": "logs", "window": {"start": 10, "period": "minutes"},
        "query": {"target": "action:agent.disconnect", "operator": "ge", "threshold": 2}}]})
    ev = svc.evaluator
    now = time.time()
    assert ev.cycle(now=now, force=True) == []
    audit(svc, ORG, "machine.destroy", "machine", "m2")
    audit(svc, "o2", "machine.destroy", "machine", "x1")  # another organisation's
    audit(svc, ORG, "agent.disconnect", "agent", "m1")
    acts = ev.cycle(now=now + 1, force=True)
    assert [(a.rule["name"], a.incident["machine"], a.incident["value"]) for a in acts] == [
        ("destroyed", "m2", 1.0)]
    audit(svc, ORG, "agent.disconnect", "agent", "m1")
    acts = ev.cycle(now=now + 2, force=True)
    assert [(a.rule["name"], a.incident["machine"], a.incident["value"]) for a in acts] == [
        ("disconnected", "m1", 2.0)]
    assert ev.cycle(now=now + 3, force=True) == []  # still in the window: nothing new
    # a restart reads the window back from the audit log: the incidents are open, so
    # nothing fires twice; what happens next counts
    fresh = Evaluator(svc.store, svc.rules, Incidents(svc.store, svc.writer))
    assert fresh.cycle(now=now + 4, force=True) == []
    audit(svc, ORG, "machine.destroy", "machine", "m1")
    acts = fresh.cycle(now=now + 5, force=True)
    assert [(a.rule["name"], a.incident["machine"]) for a in acts] == [("destroyed", "m1")]
    acts = fresh.cycle(now=now + 700, force=True)  # out of the window: resolved
    assert sorted(a.event for a in acts) == ["resolved"] * 3
    assert fresh.incidents.open == {}


def test_disable_delete_restart_and_isolation(svc: Services, store: Store) -> None:
    r = cpu_rule(svc)
    cpu_rule(svc, p=OTHER)
    cpu(svc, "m1", T0, 99, 99, 99)
    cpu(svc, "x1", T0, 99, 99, 99, org="o2")
    cpu(svc, "m2", T0, 99, 99, 99, org="o2")  # an "m2" in the other org: not ours
    acts = svc.evaluator.cycle(now=T0 + 1, force=True)
    assert sorted((a.incident["org"], a.incident["machine"]) for a in acts) == [("o1", "m1"), ("o2", "x1")]
    assert [d["machine"] for d in svc.incidents.list(P, parse_query({}))[0]] == ["m1"]
    # a restart: the open incident is known, nothing fires again
    fresh = Evaluator(store, svc.rules, Incidents(store, svc.writer))
    cpu(svc, "m1", T0 + 10, 99)
    cpu(svc, "x1", T0 + 10, 99, org="o2")
    assert fresh.cycle(now=T0 + 11, force=True) == []
    svc.rules.toggle(P, P.actor(), r["id"], "disable")
    acts = fresh.cycle(now=T0 + 12, force=True)
    assert [(a.incident["machine"], a.incident["reason"]) for a in acts] == [("m1", "the rule was disabled")]
    svc.rules.toggle(P, P.actor(), r["id"], "enable")
    cpu(svc, "m1", T0 + 20, 99)
    assert [a.event for a in fresh.cycle(now=T0 + 21, force=True)] == ["firing"]
    svc.rules.delete(P, P.actor(), r["id"])
    acts = fresh.cycle(now=T0 + 22, force=True)
    assert [(a.event, a.incident["reason"]) for a in acts] == [("resolved", "the rule was deleted")]
    assert [d["state"] for d in svc.incidents.list(OTHER, parse_query({}))[0]] == ["firing"]


def test_retention_prunes_resolved_incidents_audited(svc: Services) -> None:
    cpu_rule(svc)
    for m in ("m1", "m2"):
        cpu(svc, m, T0, 99, 99, 99)
    svc.evaluator.cycle(now=T0 + 1, force=True)
    cpu(svc, "m1", T0 + 10, 1, 1, 1)
    cpu(svc, "m2", T0 + 10, 99)
    svc.evaluator.cycle(now=T0 + 11, force=True)
    assert sorted(states(svc)) == [("m1", "resolved", True), ("m2", "firing", True)]
    assert svc.incidents.prune(T0 + 5) == 0  # resolved after the cutoff: kept
    assert svc.incidents.prune(time.time() + 1) == 1
    assert states(svc) == [("m2", "firing", True)]
    [entry] = [json.loads(v) for _, v in svc.store.scan("audit/") if b"incident.prune" in v]
    assert entry["org"] == ORG and entry["details"]["count"] == 1


def test_no_data_grace_after_a_start_and_for_stopped_machines(svc: Services) -> None:
    """After a start, agents may wait up to AGENT_RECONNECT_MAX before they connect again:
    a machine not heard from since is not "no data" before its window and that much more
    have passed; one that reports again is judged as usual. A machine stopped, suspended or
    terminated is silent on purpose: left alone, its incident resolved, and the grace
    applies again once it runs."""
    svc.rules.ensure_nodata(ORG)
    svc.rules.edit(P, P.actor(), "nodata", {"conditions": [{"data_type": "nodata",
                                                          "window": {"start": 30, "period": "seconds"}}]})
    machine(svc.store, "m3", ORG, {}, created=T0 - 86400)
    for mid in ("m1", "m2", "m3"):  # the controller was down for 10 minutes
        samples(svc, ORG, mid, "system_uptime", T0 - 600, 1, 2, 3)
    ev = svc.evaluator
    assert ev.cycle(now=T0, force=True) == []  # the evaluator starts: nothing fires at once
    samples(svc, ORG, "m2", "system_uptime", T0 + 20, 4)  # m2's agent is back
    assert ev.cycle(now=T0 + 30, force=True) == []
    samples(svc, ORG, "m2", "system_uptime", T0 + 80, 5)
    assert ev.cycle(now=T0 + 89, force=True) == []  # 30 s window + 60 s of reconnect waits
    acts = ev.cycle(now=T0 + 91, force=True)
    assert sorted((a.incident["machine"], a.event) for a in acts) == [("m1", "firing"), ("m3", "firing")]
    # m1 is stopped on purpose: its incident resolves and none opens while it is stopped
    stopped = json.loads(svc.store.get(machine_key(ORG, "m1")) or b"{}")
    svc.store.put(machine_key(ORG, "m1"), dump(MACHINE, dict(stopped, state="stopped")))
    ev.machines(ORG, T0 + 92).read_at = 0
    samples(svc, ORG, "m2", "system_uptime", T0 + 95, 6)
    acts = ev.cycle(now=T0 + 95, force=True)
    assert [(a.incident["machine"], a.event, a.incident["reason"]) for a in acts] == [
        ("m1", "resolved", "the machine is stopped")]
    samples(svc, ORG, "m2", "system_uptime", T0 + 200, 7)
    assert ev.cycle(now=T0 + 200, force=True) == []
    # started again: its agent has the same grace to come back, from when it was last seen stopped
    svc.store.put(machine_key(ORG, "m1"), dump(MACHINE, dict(stopped, state="running")))
    ev.machines(ORG, T0 + 201).read_at = 0
    samples(svc, ORG, "m2", "system_uptime", T0 + 280, 8)
    assert ev.cycle(now=T0 + 280, force=True) == []
    samples(svc, ORG, "m2", "system_uptime", T0 + 295, 9)
    assert [a.incident["machine"] for a in ev.cycle(now=T0 + 295, force=True)] == ["m1"]


def test_no_data_incident_open_before_a_restart_stays_open(svc: Services, store: Store) -> None:
    svc.rules.ensure_nodata(ORG)
    svc.rules.edit(P, P.actor(), "nodata", {"conditions": [{"data_type": "nodata",
                                                          "window": {"start": 30, "period": "seconds"}}],
                                            "selectors": [{"type": "machines", "ids": ["m1"]}]})
    svc.evaluator.started = T0 - 3600
    samples(svc, ORG, "m1", "system_uptime", T0, 1)
    assert [a.event for a in svc.evaluator.cycle(now=T0 + 40, force=True)] == ["firing"]
    fresh = Evaluator(store, svc.rules, Incidents(store, svc.writer))  # a restart
    assert fresh.cycle(now=T0 + 50, force=True) == []  # neither resolved nor fired again
    assert [d["state"] for d in svc.incidents.list(P, parse_query({}))[0]] == ["firing"]


def test_the_reconnect_grace_matches_the_agent() -> None:
    from agent.control import BACKOFF_MAX

    assert AGENT_RECONNECT_MAX >= BACKOFF_MAX


def test_a_flapping_condition_notifies_at_most_every_notify_min_interval(svc: Services,
                                                                         store: Store) -> None:
    """notify_every 0, a condition that comes and goes: one notification per
    notify_min_interval (300 s by default), remembered across a restart, then forgotten."""
    assert svc.settings.notify_min_interval == 300 and svc.incidents.min_interval == 300
    cpu_rule(svc)
    ev = svc.evaluator

    def flip(e: Evaluator, t: float, high: bool) -> list[tuple[str, bool]]:
        cpu(svc, "m1", t, *((99.0 if high else 1.0) for _ in range(3)))
        return [(a.event, a.quiet) for a in e.cycle(now=t + 1, force=True)]

    assert flip(ev, T0, True) == [("firing", False)]
    assert flip(ev, T0 + 40, False) == [("resolved", False)]
    assert flip(ev, T0 + 80, True) == [("firing", True)]  # 80 s after the last notification
    assert flip(ev, T0 + 120, False) == [("resolved", True)]
    # a restart remembers when m1 was last notified
    assert store.count("incnotified/") == 1
    fresh = Evaluator(store, svc.rules, Incidents(store, svc.writer, min_interval=300))
    assert flip(fresh, T0 + 160, True) == [("firing", True)]
    assert flip(fresh, T0 + 200, False) == [("resolved", True)]
    assert flip(fresh, T0 + 320, True) == [("firing", False)]  # 320 s after: notified
    # what can no longer throttle anything is forgotten (kept while the incident is open)
    incidents = fresh.incidents
    assert incidents.prune_notified(T0 + 2000, lambda org, rid: 300) == 0
    assert flip(fresh, T0 + 360, False) == [("resolved", False)]
    assert incidents.prune_notified(T0 + 400, lambda org, rid: 300) == 0  # 79 s ago: kept
    assert incidents.prune_notified(T0 + 700, lambda org, rid: 300) == 1
    assert store.count("incnotified/") == 0 and incidents._notified == {}


def test_log_entries_are_kept_per_organisation(svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A noisy organisation's audit entries never push another's out of its window."""
    monkeypatch.setattr(feed, "MAX_ENTRIES", 100)
    monkeypatch.setattr(feed, "MAX_PER_ORG", 60, raising=False)
    for p in (P, OTHER):
        svc.rules.add(p, p.actor(), {"name": "keys", "conditions": [{
            "data_type": "logs", "window": {"start": 10, "period": "minutes"},
            "query": {"target": "action:key.add", "operator": "ge", "threshold": 3}}]})
    ev = svc.evaluator
    now = time.time()
    assert ev.cycle(now=now, force=True) == []
    for _ in range(3):
        audit(svc, ORG, "key.add", "key", "k1")
    for _ in range(150):  # the other organisation is busy
        audit(svc, "o2", "key.add", "key", "x0")
    acts = ev.cycle(now=now + 1, force=True)
    assert sorted((a.incident["org"], a.incident["value"]) for a in acts) == [("o1", 3.0), ("o2", 60.0)]
    assert ev.feed.size("o1") == 4 and ev.feed.size("o2") == 60  # o1's: its rule.add, 3 keys
    # a restart reads each organisation's window back within the same limits
    fresh = Evaluator(svc.store, svc.rules, Incidents(svc.store, svc.writer))
    fresh.cycle(now=now + 2, force=True)
    assert fresh.feed.size("o1") == 4 and fresh.feed.size("o2") == 60
    # over MAX_ENTRIES in all, the organisations with the most give up their oldest first
    monkeypatch.setattr(feed, "MAX_ENTRIES", 50)
    for _ in range(5):
        audit(svc, "o2", "key.add", "key", "x0")
    fresh.cycle(now=now + 3, force=True)
    assert fresh.feed.size("o1") == 4 and fresh.feed.size("o2") == 46 and fresh.feed.size() == 50


async def test_actions_stop_when_the_owner_leaves_or_is_disabled(svc: Services, store: Store) -> None:
    """A rule's actions run only while its owner can act in the organisation: otherwise
    none runs, the incident says why, and the audit log has incident.skip. Whoever edits
    the rule then takes it over."""
    svc.incidents.min_interval = 0
    for uid, email in (("u1", "a@example.com"), ("u3", "c@example.com")):
        store.put(f"user/{uid}", dump(USER, {"id": uid, "email": email}))
        store.put(f"useremail/{email}", uid.encode())
        store.put(f"member/{ORG}/{uid}", dump(MEMBER, {"org": ORG, "user": uid, "role": "member"}))
    store.put(f"org/{ORG}", dump(ORG_KIND, {"id": ORG, "name": "Acme"}))
    cpu_rule(svc, actions=[{"action_type": "webhook", "url": "http://127.0.0.1:9/hook"},
                           {"action_type": "stop"}])
    ev = svc.evaluator
    assert ev.dispatch is not None

    async def flap(t: float) -> list[dict[str, Any]]:
        cpu(svc, "m1", t, 1, 1, 1)
        ev.cycle(now=t + 1, force=True)
        cpu(svc, "m1", t + 40, 99, 99, 99)
        [act] = ev.cycle(now=t + 41, force=True)
        assert ev.dispatch is not None
        await ev.dispatch(act)
        doc = json.loads(store.get(f"incident/{ORG}/{act.incident['id']}") or b"{}")
        return list(doc["actions"])

    first = await flap(T0)
    assert [a["action_type"] for a in first] == ["webhook", "stop"] and first[0]["status"] == "pending"
    notes = store.count(f"notification/{ORG}/")
    store.delete(f"member/{ORG}/u1")  # the owner leaves the organisation
    skipped = await flap(T0 + 100)
    assert {a["status"] for a in skipped} == {"skipped"}
    assert "no longer a member of this organisation" in skipped[0]["error"]
    assert store.count(f"notification/{ORG}/") == notes
    [entry] = [json.loads(v) for _, v in store.scan("audit/") if b'"incident.skip"' in v]
    assert entry["outcome"] == "failed" and entry["details"]["actions"] == ["webhook", "stop"]
    store.put(f"member/{ORG}/u1", dump(MEMBER, {"org": ORG, "user": "u1", "role": "member"}))
    store.put("user/u1", dump(USER, {"id": "u1", "email": "a@example.com", "disabled": True}))
    disabled = await flap(T0 + 200)
    assert {a["status"] for a in disabled} == {"skipped"} and "disabled" in disabled[0]["error"]
    # another member edits the rule: it is theirs now, and its actions run again
    c = Principal({"id": "u3", "email": "c@example.com"}, {"id": ORG, "name": "Acme"}, "member", "token", "t3")
    edited = svc.rules.edit(c, c.actor(), "cpu", {"description": "mine now"})
    assert edited["owned_by"] == "c@example.com"
    ev.machines(ORG, T0 + 300).read_at = 0
    again = await flap(T0 + 300)
    assert again[0]["status"] == "pending" and store.count(f"notification/{ORG}/") == notes + 1
