"""Diffing a poll into the store: what is new, changed and missing becomes one audited
change each (detected by polling) with a live event; unchanged resources write nothing;
nothing is deleted silently; the host/guest tree; tags and costs survive polls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.clouds.costs import machine_cost, totals
from controller.clouds.inventory import Snapshot, reconcile
from controller.clouds.model import resource_id
from controller.clouds.providers.base import (
    DnsRecord,
    MachineRecord,
    SizeRecord,
    VolumeRecord,
    ZoneRecord,
)
from controller.events.model import Actor
from controller.events.writer import Writer
from controller.store import open_store
from controller.store.base import Store

CLOUD = {"id": "c1", "org": "o1", "provider": "amazon", "name": "AWS"}
ACTOR = Actor(kind="system", id="poller", via="poller")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(tmp_path / "db")


def apply(store: Store, snap: Snapshot, now: float = 1_000_000.0) -> Any:
    out = reconcile(store, CLOUD, snap, now=now)
    if out.changes:
        Writer(store).commit_many(ACTOR, out.changes)
    if out.quiet:
        store.write(out.quiet)
    return out


def machine(store: Store, ext: str) -> dict[str, Any]:
    raw = store.get(f"machine/o1/{resource_id('c1', 'machine', ext)}")
    assert raw is not None
    doc: dict[str, Any] = json.loads(raw)
    return doc


def vm(ext: str, state: str = "running", **kw: Any) -> MachineRecord:
    return MachineRecord(external_id=ext, name=f"vm-{ext}", state=state, size="t2.micro",
                         price_per_hour=0.0116, **kw)


def actions(out: Any) -> list[str]:
    return [c.action for c in out.changes]


def test_new_machines_are_detected_and_audited(store: Store) -> None:
    out = apply(store, Snapshot(machines=[vm("i-1"), vm("i-2")]))
    assert actions(out) == ["machine.detected", "machine.detected"]
    assert all(c.details["detected_by"] == "polling" for c in out.changes)
    assert [e.type for c in out.changes for e in c.events] == ["created", "created"]
    m = machine(store, "i-1")
    assert m["state"] == "running" and m["cloud"] == "c1" and m["org"] == "o1"
    assert m["cost"]["source"] == "pricing" and m["cost"]["monthly"] == pytest.approx(8.468)
    audit = [json.loads(v) for _, v in store.scan("audit/")]
    assert [e["action"] for e in audit] == ["machine.detected", "machine.detected"]


def test_an_unchanged_poll_writes_nothing_and_audits_nothing(store: Store) -> None:
    apply(store, Snapshot(machines=[vm("i-1")]))
    out = apply(store, Snapshot(machines=[vm("i-1")]), now=1_000_010.0)
    assert out.changes == [] and not out.quiet


def test_a_state_change_is_audited_with_from_and_to_and_stopped_costs_nothing(store: Store) -> None:
    apply(store, Snapshot(machines=[vm("i-1")]))
    out = apply(store, Snapshot(machines=[vm("i-1", "stopped")]))
    assert actions(out) == ["machine.changed"]
    assert out.changes[0].details["changes"] == {"state": {"from": "running", "to": "stopped"}}
    m = machine(store, "i-1")
    assert m["state"] == "stopped" and m["cost"] == {"hourly": 0.0, "monthly": 0.0,
                                                     "currency": "USD", "source": "stopped"}


def test_a_missing_machine_is_marked_not_deleted_and_comes_back(store: Store) -> None:
    apply(store, Snapshot(machines=[vm("i-1"), vm("i-2")]))
    out = apply(store, Snapshot(machines=[vm("i-1")]), now=1_000_100.0)
    assert actions(out) == ["machine.missing"]
    gone = machine(store, "i-2")
    assert gone["missing_since"] == "1970-01-12T13:48:20Z"
    assert gone["cost"]["hourly"] == 0.0
    # still missing: no second entry
    assert apply(store, Snapshot(machines=[vm("i-1")]), now=1_000_200.0).changes == []
    back = apply(store, Snapshot(machines=[vm("i-1"), vm("i-2")]), now=1_000_300.0)
    assert actions(back) == ["machine.changed"]
    assert machine(store, "i-2")["missing_since"] == ""


def test_hosts_list_their_guests(store: Store) -> None:
    apply(store, Snapshot(machines=[vm("host"), vm("g1", parent="host"), vm("g2", parent="host")]))
    host = machine(store, "host")
    assert host["children"] == sorted([resource_id("c1", "machine", "g1"),
                                       resource_id("c1", "machine", "g2")])
    assert machine(store, "g1")["parent"] == host["id"]


def test_user_tags_survive_polls_and_override_cost(store: Store) -> None:
    apply(store, Snapshot(machines=[vm("i-1", tags={"env": "dev"})]))
    key = f"machine/o1/{resource_id('c1', 'machine', 'i-1')}"
    doc = machine(store, "i-1")
    doc["_user_tags"] = {"owner": "ops", "cost_per_month": "100"}
    from controller.store.base import Batch

    store.write(Batch({key: json.dumps(doc).encode()}))
    apply(store, Snapshot(machines=[vm("i-1", tags={"env": "prod"})]))
    m = machine(store, "i-1")
    assert m["tags"] == {"env": "prod", "owner": "ops", "cost_per_month": "100"}
    assert m["cost"]["source"] == "tag" and m["cost"]["monthly"] == 100.0


def test_volumes_zones_records_and_the_catalogue(store: Store) -> None:
    snap = Snapshot(machines=[vm("i-1")],
                    volumes=[VolumeRecord("vol-1", "data", size_gb=8, attached_to=["i-1"])],
                    zones=[ZoneRecord("Z1", "example.com")],
                    records={"Z1": [DnsRecord("r1", "Z1", "www", "A", "10.0.0.1", 300)]},
                    sizes=[SizeRecord("t2.micro", "t2.micro", 1, 1024, 0, 0.0116)])
    out = apply(store, snap)
    assert sorted(actions(out)) == ["machine.detected", "record.detected", "volume.detected",
                                    "zone.detected"]
    vol = json.loads(store.get(f"volume/o1/{resource_id('c1', 'volume', 'vol-1')}") or b"{}")
    assert vol["attached_to"] == [resource_id("c1", "machine", "i-1")] and vol["size"] == 8
    zid = resource_id("c1", "zone", "Z1")
    recs = [json.loads(v) for _, v in store.scan(f"record/o1/{zid}/")]
    assert [(r["name"], r["type"], r["rdata"]) for r in recs] == [("www", "A", ["10.0.0.1"])]
    # sizes are catalogue: replaced quietly, no audit entry
    out = apply(store, Snapshot(sizes=[SizeRecord("t3.micro", "t3.micro")]))
    assert out.changes == []
    sizes = [json.loads(v)["name"] for _, v in store.scan("size/o1/")]
    assert sizes == ["t3.micro"]
    # a record deleted at the provider is missing, within its zone only
    out = apply(store, Snapshot(zones=[ZoneRecord("Z1", "example.com")], records={"Z1": []}))
    assert actions(out) == ["record.missing"]


def test_cost_tags_and_totals() -> None:
    assert machine_cost({"state": "running", "price_per_hour": 0.5})["monthly"] == 365.0
    assert machine_cost({"state": "running"})["source"] == "unknown"
    assert machine_cost({"state": "stopped", "price_per_hour": 1}, stopped_is_free=False)["hourly"] == 1
    assert machine_cost({"tags": {"cost_per_hour": "$2"}})["monthly"] == 1460.0
    assert machine_cost({"tags": {"cost_per_hour": "lots"}, "state": "running"})["source"] == "unknown"
    ms = [{"cloud": "a", "tags": {"team": "x"}, "cost": {"hourly": 1.0, "monthly": 730.0}},
          {"cloud": "a", "tags": {}, "cost": {"hourly": 0.5, "monthly": 365.0, "source": "unknown"}}]
    assert totals(ms, "cloud")["a"]["monthly"] == 1095.0
    by_team = totals(ms, "tag:team")
    assert by_team["x"]["hourly"] == 1.0 and by_team["(untagged)"]["unknown"] == 1


def test_a_diff_is_refused_when_a_document_changed_under_it(store: Store) -> None:
    from controller.errors import Conflict
    from controller.store.base import Batch

    apply(store, Snapshot(machines=[vm("i-1")]))
    stale = reconcile(store, CLOUD, Snapshot(machines=[vm("i-1", "stopped")]), now=1_000_050.0)
    # meanwhile a user tags the machine
    key = f"machine/o1/{resource_id('c1', 'machine', 'i-1')}"
    doc = machine(store, "i-1")
    doc["_user_tags"] = {"owner": "ops"}
    store.write(Batch({key: json.dumps(doc).encode()}))
    batch = stale.batch()
    for c in stale.changes:
        batch.puts.update(c.batch.puts)
    with pytest.raises(Conflict):
        store.write(batch)
    assert machine(store, "i-1")["_user_tags"] == {"owner": "ops"}
    # the redone diff keeps the tag
    apply(store, Snapshot(machines=[vm("i-1", "stopped")]), now=1_000_060.0)
    m = machine(store, "i-1")
    assert m["state"] == "stopped" and m["tags"]["owner"] == "ops"


def test_a_linked_machine_keeps_the_agents_facts_the_provider_lacks(store: Store) -> None:
    from controller.store.base import Batch

    apply(store, Snapshot(machines=[vm("i-1")]))
    key = f"machine/o1/{resource_id('c1', 'machine', 'i-1')}"
    facts = {"hostname": "web-host", "os_type": "linux", "cores": 4}
    linked = dict(machine(store, "i-1"), agent="a1", agent_facts=facts, **facts)  # as linking does
    store.write(Batch({key: json.dumps(linked).encode()}))
    # the provider still says nothing of them: no change, nothing undone
    out = apply(store, Snapshot(machines=[vm("i-1")]), now=1_000_010.0)
    assert actions(out) == []
    assert {f: machine(store, "i-1")[f] for f in facts} == facts
    # what the provider does say wins, and is a change
    out = apply(store, Snapshot(machines=[vm("i-1", hostname="ip-10-0-0-7")]), now=1_000_020.0)
    assert actions(out) == ["machine.changed"]
    assert out.changes[0].details["changes"]["hostname"] == {"from": "web-host", "to": "ip-10-0-0-7"}
    assert machine(store, "i-1")["hostname"] == "ip-10-0-0-7"
