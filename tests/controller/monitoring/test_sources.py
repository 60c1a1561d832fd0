"""Metric sources in the store: what a request may set (names, Mist's selectors, a script
that is one executable file, intervals), audited changes, which agents' machines the
selectors pick (tags resolved at the time asked, so a machine that gains a tag is picked),
the script's current content with its checksum, statuses per machine, and per-organisation
isolation. Also the machine's ``monitoring`` view and the link made for an enabled machine."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.accounts.model import Principal
from controller.errors import Conflict, Invalid, NotFound
from controller.events.model import Actor
from controller.events.writer import Writer
from controller.listing import parse_query
from controller.monitoring.link import link_change, unlink_change
from controller.monitoring.model import monitoring_view
from controller.monitoring.sources import SourceService, check_selectors, digest, selects
from controller.scripts.service import ScriptService
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store import open_store
from controller.store.base import Store

ORG, OTHER = "o1", "o2"
P = Principal({"id": "u1", "email": "a@example.com"}, {"id": ORG, "name": "Acme"}, "member",
              "token", "t1")
Q = Principal({"id": "u2", "email": "b@example.com"}, {"id": OTHER, "name": "Else"}, "owner",
              "token", "t2")
ACTOR = Actor(kind="user", id="u1", org=ORG)
SCRIPT = "#!/bin/sh\necho 'queue_depth{queue=\"mail\"} 3'\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "db")
    yield s
    s.close()


def put(store: Store, key: str, doc: dict[str, Any]) -> None:
    store.put(key, json.dumps(doc).encode())


@pytest.fixture
def svc(store: Store, tmp_path: Path) -> SourceService:
    writer = Writer(store)
    scripts = ScriptService(Settings(data_dir=str(tmp_path)), store, writer, SecretBox(b"k" * 32))
    for p, name in ((P, "queues"), (Q, "queues")):
        asyncio.run(scripts.add(p, ACTOR, {"name": name, "location_type": "inline",
                                           "script": SCRIPT, "exec_type": "executable"}))
    # an agent host (its own machine) and a cloud machine linked to another agent
    put(store, f"machine/{ORG}/a1", {"id": "a1", "name": "web-1", "agent": "a1",
                                     "monitoring": True, "state": "running",
                                     "tags": {"env": "prod", "role": "web"}})
    put(store, f"machine/{ORG}/c1", {"id": "c1", "name": "db-1", "agent": "a2",
                                     "monitoring": True, "agent_state": "connected",
                                     "tags": {"env": "prod"}})
    for aid, mid in (("a1", "a1"), ("a2", "c1")):
        put(store, f"agent/{ORG}/{aid}", {"id": aid, "org": ORG, "machine": mid})
        store.put(f"agentid/{aid}", ORG.encode())
    return SourceService(store, writer, scripts)


def agent(store: Store, aid: str) -> dict[str, Any]:
    return dict(json.loads(store.get(f"agent/{ORG}/{aid}") or b"{}"))


def test_selectors_are_mists_and_all_must_match() -> None:
    tags = check_selectors([{"type": "tags", "include": ["env=prod", "role"]}])
    m = {"id": "c1", "tags": {"env": "prod", "role": "web"}}
    assert selects(tags, m, "a2")
    assert not selects(tags, {"id": "c1", "tags": {"env": "prod"}}, "a2")
    ids = check_selectors([{"type": "machines", "ids": ["a2"]}])
    assert selects(ids, m, "a2") and not selects(ids, m, "a3")  # the agent's id stands for it
    assert not selects(ids + check_selectors([{"type": "tags", "include": ["env=dev"]}]), m, "a2")
    for bad in ([], [{"type": "age", "minutes": 5}], [{"type": "tags", "include": []}],
                [{"type": "machines", "ids": [3]}], "tag:env=prod"):
        with pytest.raises(Invalid) as e:
            check_selectors(bad)
        assert e.value.details["field"] == "selectors"


def test_create_checks_what_it_is_given_and_audits(svc: SourceService, store: Store) -> None:
    doc = svc.create(P, ACTOR, {"name": "queues", "script": "queues", "timeout": 5,
                                "selectors": [{"type": "tags", "include": ["env=prod"]}]})
    assert doc["interval"] == 0 and doc["timeout"] == 5 and doc["script_name"] == "queues"
    [entry] = [json.loads(v) for _, v in store.scan("audit/")
               if json.loads(v)["action"] == "metricsource.create"]
    assert entry["target"]["id"] == doc["id"] and entry["details"]["name"] == "queues"
    with pytest.raises(Conflict):
        svc.create(P, ACTOR, {"name": "queues", "script": "queues",
                              "selectors": [{"type": "tags", "include": ["env"]}]})
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "bad name!", "script": "queues", "selectors": [{"type": "tags", "include": ["a"]}]}, "name"),
        ({"name": "x", "script": "nope", "selectors": [{"type": "tags", "include": ["a"]}]}, ""),
        ({"name": "x", "script": "queues", "selectors": [{"type": "machines", "ids": ["zz"]}]}, "selectors"),
        ({"name": "x", "script": "queues", "selectors": [{"type": "tags", "include": ["a"]}],
          "interval": 100_000}, "interval"),
        ({"name": "x", "script": "queues"}, "selectors"),
    ]
    for body, field in cases:
        with pytest.raises((Invalid, NotFound)) as e:
            svc.create(P, ACTOR, body)
        if field:
            assert e.value.details.get("field") == field, (body, e.value.message)


def test_agents_get_the_sources_their_machines_are_selected_for(svc: SourceService,
                                                              store: Store) -> None:
    web = svc.create(P, ACTOR, {"name": "web", "script": "queues",
                                "selectors": [{"type": "tags", "include": ["role=web"]}]})
    svc.create(P, ACTOR, {"name": "all", "script": "queues", "interval": 30,
                          "selectors": [{"type": "tags", "include": ["env=prod"]}]})
    [a1_all, a1_web] = svc.for_agent(agent(store, "a1"))
    assert (a1_all.name, a1_all.interval, a1_web.name) == ("all", 30, "web")
    assert a1_web.content == SCRIPT.encode()
    assert a1_web.sha256 == hashlib.sha256(SCRIPT.encode()).hexdigest()
    before = svc.for_agent(agent(store, "a2"))
    assert [s.name for s in before] == ["all"]  # c1 has no role=web tag
    # c1 gains the tag: asked again, its agent gets the source (nothing cached)
    doc = json.loads(store.get(f"machine/{ORG}/c1") or b"")
    put(store, f"machine/{ORG}/c1", dict(doc, tags={"env": "prod", "role": "web"}))
    after = svc.for_agent(agent(store, "a2"))
    assert [s.name for s in after] == ["all", "web"] and digest(after) != digest(before)
    assert svc.get(P, web["id"])["machines"] == ["a1", "c1"]
    # a script whose stored content no longer matches its checksum is never sent
    sid = web["script"]
    store.put(f"scriptdata/{ORG}/{sid}", b"#!/bin/sh\nrm -rf /\n")
    assert svc.for_agent(agent(store, "a2")) == []


def test_statuses_are_kept_per_machine_and_never_across_organisations(svc: SourceService,
                                                                     store: Store) -> None:
    src = svc.create(P, ACTOR, {"name": "s", "script": "queues",
                                "selectors": [{"type": "machines", "ids": ["c1"]}]})
    ev = svc.status("a2", {"source_id": src["id"], "samples": 2, "bad_lines": ["line 3: x"],
                           "bad_line_count": 1, "time_ms": 1_764_142_200_000})
    assert ev is not None and ev.org == ORG
    [st] = svc.get(P, src["id"])["status"]
    assert st["machine"] == "c1" and st["samples"] == 2 and st["bad_lines"] == ["line 3: x"]
    # another organisation's source id from this agent: ignored
    other = svc.create(Q, Actor(kind="user", id="u2", org=OTHER), {
        "name": "s", "script": "queues", "selectors": [{"type": "tags", "include": ["x"]}]})
    assert svc.status("a2", {"source_id": other["id"], "samples": 9}) is None
    assert svc.get(Q, other["id"])["status"] == []
    with pytest.raises(NotFound):
        svc.get(Q, src["id"])
    assert [d["id"] for d in svc.list_sources(P, parse_query({}))[0]] == [src["id"]]
    svc.delete(P, ACTOR, src["id"])
    assert list(store.scan(f"metricstatus/{ORG}/")) == []


def test_the_monitoring_view_of_a_machine() -> None:
    assert monitoring_view({"id": "m"}) == {"enabled": False, "agent_id": "", "state": "disabled"}
    own = {"id": "a", "agent": "a", "monitoring": True, "state": "running"}
    assert monitoring_view(own) == {"enabled": True, "agent_id": "a", "state": "connected"}
    linked = {"id": "c", "agent": "a", "monitoring": True, "agent_state": "unreachable"}
    assert monitoring_view(linked)["state"] == "unreachable"
    busy = {"id": "c", "_monitoring": {"state": "installing", "job": "j1"}}
    assert monitoring_view(busy) == {"enabled": False, "agent_id": "", "state": "installing",
                                     "job": "j1"}
    failed = {"id": "c", "_monitoring": {"state": "failed", "job": "j", "error": "exit 5"}}
    assert monitoring_view(failed)["error"] == "exit 5"
    off = dict(own, monitoring=False)
    assert monitoring_view(off)["enabled"] is False


def test_link_and_unlink_for_an_enabled_machine(store: Store) -> None:
    writer = Writer(store)
    put(store, f"machine/{ORG}/c9", {"id": "c9", "name": "box", "cloud": "k", "state": "running"})
    put(store, f"machine/{ORG}/a9", {"id": "a9", "name": "box", "agent": "a9", "state": "running",
                                     "cores": 2, "hostname": "box"})
    put(store, f"agent/{ORG}/a9", {"id": "a9", "org": ORG})
    change = link_change(store, ORG, "a9", "c9", {"state": "installing", "job": "j"})
    assert change is not None
    writer.commit(ACTOR, change)
    m = json.loads(store.get(f"machine/{ORG}/c9") or b"")
    assert m["agent"] == "a9" and m["agent_state"] == "connected" and m["cores"] == 2
    assert store.get(f"machine/{ORG}/a9") is None  # one host, one machine
    assert json.loads(store.get(f"agent/{ORG}/a9") or b"")["machine"] == "c9"
    change = unlink_change(store, ORG, "c9", "a9", {"state": "", "job": "j2"}, {})
    assert change is not None
    writer.commit(ACTOR, change)
    m = json.loads(store.get(f"machine/{ORG}/c9") or b"")
    assert "agent" not in m and monitoring_view(m)["state"] == "disabled"
