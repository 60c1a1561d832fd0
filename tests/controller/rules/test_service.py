"""Rules through the service over a real store: the Mist v2 shapes (and v1's queries/window/
frequency) stored normalised; bad input refused naming the field, with the status a client
can act on (400 for a wrong type, 422 for a wrong value: an unknown metric is named, with
what was probably meant); webhooks' secrets sealed and kept across edits; every change
audited; organisations isolated."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.accounts.model import MEMBER, USER, Principal
from controller.accounts.model import ORG as ORG_KIND
from controller.errors import BadRequest, Conflict, Forbidden, Invalid, NotFound
from controller.listing import parse_query
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.notify.model import redact_url
from controller.rules.model import RULE
from controller.rules.service import owner_problem
from controller.services import Services, build_services
from controller.settings import Settings
from controller.store import open_store
from controller.store.base import Store
from controller.store.docs import dump, migrate_store

ORG = "o1"
P = Principal({"id": "u1", "email": "a@example.com"}, {"id": ORG, "name": "Acme"}, "owner", "token", "t1")
OTHER = Principal({"id": "u2", "email": "b@example.com"}, {"id": "o2", "name": "B"}, "owner", "token", "t2")
CPU: dict[str, Any] = {"data_type": "metrics", "window": {"start": 5, "period": "minutes"},
       "query": {"target": 'cpu_usage_active{cpu="cpu-total"}', "operator": "gt",
                 "threshold": 90, "aggregation": "avg"}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "db")
    yield s
    s.close()


def services(store: Store, tmp_path: Path, allow_local: bool = True, **more: Any) -> Services:
    svc = build_services(Settings(data_dir=str(tmp_path), allow_local_clouds=allow_local, **more), store)
    store.put(machine_key(ORG, "m1"), dump(MACHINE, {"id": "m1", "name": "web1", "agent": "m1"}))
    store.put(machine_key("o2", "m2"), dump(MACHINE, {"id": "m2", "name": "db", "agent": "m2"}))
    for uid, email, org in (("u1", "a@example.com", ORG), ("u2", "b@example.com", "o2")):
        store.put(f"user/{uid}", dump(USER, {"id": uid, "email": email}))
        store.put(f"useremail/{email}", uid.encode())
        store.put(f"member/{org}/{uid}", dump(MEMBER, {"org": org, "user": uid, "role": "owner"}))
    return svc


def add(svc: Services, **body: Any) -> dict[str, Any]:
    return svc.rules.add(P, P.actor(), {"name": "cpu", "conditions": [CPU], **body})


def test_add_show_list_in_the_spec_shape(store: Store, tmp_path: Path) -> None:
    svc = services(store, tmp_path)
    r = add(svc, description="busy", selectors=[{"type": "machines", "ids": ["m1"]},
                                                 {"type": "tags", "include": ["env:prod", "team"]}],
            actions=[{"action_type": "notify", "emails": ["ops@example.com"], "users": ["a@example.com"]},
                     {"action_type": "stop"}],
            when={"schedule_type": "interval", "every": 2, "period": "minutes"},
            trigger_after={"offset": 30, "period": "seconds"})
    assert r["conditions"] == [CPU | {"window": {"start": 5, "stop": 0, "period": "minutes"}}]
    assert r["selectors"][1] == {"type": "tags", "include": ["env=prod", "team"]}
    assert r["actions"][0] == {"action_type": "notify", "on_resolve": False,
                               "emails": ["ops@example.com"], "users": ["u1"]}
    assert r["when"] == {"schedule_type": "interval", "every": 2, "period": "minutes"}
    assert r["enabled"] is True and r["created_by"] == "a@example.com" and "org" not in r
    assert svc.rules.get(P, "cpu") == r and svc.rules.get(P, r["id"]) == r
    data, meta = svc.rules.list_rules(P, parse_query({}))
    assert [d["id"] for d in data] == [r["id"]] and meta["total"] == 1


def test_mist_v1_shape_and_mist_metric_names(store: Store, tmp_path: Path) -> None:
    svc = services(store, tmp_path)
    r = svc.rules.add(P, P.actor(), {
        "name": "load", "queries": [{"target": "load.shortterm", "operator": ">", "threshold": 4,
                                     "aggregation": "all"}],
        "window": {"start": 2, "period": "minutes"}, "frequency": {"every": 30, "period": "seconds"}})
    assert r["conditions"][0]["query"]["operator"] == "gt"
    assert r["conditions"][0]["window"] == {"start": 2, "stop": 0, "period": "minutes"}
    assert r["when"]["every"] == 30 and r["when"]["period"] == "seconds"


@pytest.mark.parametrize(("change", "error", "field"), [
    ({"threshold": "90"}, BadRequest, "conditions[0].query.threshold"),
    ({"threshold": True}, BadRequest, "conditions[0].query.threshold"),
    ({"threshold": None}, BadRequest, "conditions[0].query.threshold"),
    ({"operator": "bigger"}, Invalid, "conditions[0].query.operator"),
    ({"aggregation": "median"}, Invalid, "conditions[0].query.aggregation"),
    ({"target": "cpu_usage_activ"}, Invalid, "conditions[0].query.target"),
    ({"target": "cpu{x=}"}, Invalid, "conditions[0].query.target"),
    ({"target": "rate(cpu_usage_active[5m])"}, Invalid, "conditions[0].query.target"),
])
def test_bad_queries(store: Store, tmp_path: Path, change: dict[str, Any], error: type[Invalid],
                     field: str) -> None:
    svc = services(store, tmp_path)
    cond = json.loads(json.dumps(CPU))
    cond["query"].update(change)
    with pytest.raises(error) as e:
        svc.rules.add(P, P.actor(), {"name": "x", "conditions": [cond]})
    assert isinstance(e.value, Invalid) and e.value.details["field"] == field
    assert e.value.status == (400 if error is BadRequest else 422)
    if "target" in change and change["target"] == "cpu_usage_activ":
        assert "unknown metric 'cpu_usage_activ'" in e.value.message
        assert "did you mean cpu_usage_active" in e.value.message
    assert store.count(f"rule/{ORG}/") == 0


def test_other_bad_input(store: Store, tmp_path: Path) -> None:
    svc = services(store, tmp_path)
    cases: list[tuple[dict[str, Any], type[Invalid], str]] = [
        ({"conditions": []}, Invalid, "conditions"),
        ({"conditions": [dict(CPU, window={"start": 1, "stop": 2, "period": "minutes"})]}, Invalid, "stop"),
        ({"conditions": [dict(CPU, window={"start": "5", "period": "minutes"})]}, BadRequest, "start"),
        ({"conditions": [dict(CPU, window={"start": 5, "period": "fortnights"})]}, Invalid, "period"),
        ({"selectors": [{"type": "machines", "ids": ["m2"]}]}, Invalid, "no such machine"),
        ({"selectors": [{"type": "volumes", "ids": ["v"]}]}, Invalid, "type"),
        ({"actions": [{"action_type": "notify", "teams": ["t1"]}]}, Invalid, "teams"),
        ({"actions": [{"action_type": "notify", "emails": ["nope"]}]}, Invalid, "e-mail"),
        ({"actions": [{"action_type": "notify", "users": ["b@example.com"]}]}, Invalid, "member"),
        ({"actions": [{"action_type": "run_script", "script": "missing"}]}, Invalid, "no such script"),
        ({"actions": [{"action_type": "explode"}]}, Invalid, "action_type"),
        ({"actions": [{"action_type": "webhook", "url": "ftp://x"}]}, Invalid, "http"),
        ({"when": {"schedule_type": "crontab", "minute": "*"}}, Invalid, "interval"),
        ({"when": {"every": 0, "period": "minutes"}}, Invalid, "every"),
        ({"name": ""}, Invalid, "name"),
        ({"name": 5}, BadRequest, "name"),
    ]
    for body, error, words in cases:
        with pytest.raises(error) as e:
            svc.rules.add(P, P.actor(), {"name": "x", "conditions": [CPU], **body})
        assert words in e.value.message or words in str(e.value.details), (body, e.value.message)
    add(svc)
    with pytest.raises(Conflict):
        add(svc)


def test_webhook_secrets_sealed_shown_masked_kept_on_edit(store: Store, tmp_path: Path) -> None:
    svc = services(store, tmp_path)
    r = add(svc, actions=[{"action_type": "webhook", "method": "post",
                           "url": "https://hooks.example.com/x?key=k3y", "query_string_params": "a=1",
                           "headers": json.dumps({"Authorization": "Bearer t0ken", "X-Env": "prod"}),
                           "json": {"team": "ops"}}])
    a = r["actions"][0]
    assert a["url"] == redact_url("https://hooks.example.com/x?key=k3y&a=1")
    assert a["url"].startswith("https://hooks.example.com/\u2026 (")
    assert a["headers"] == {"Authorization": "***", "X-Env": "prod"} and a["method"] == "POST"
    raw = b"".join(v for _, v in store.scan(""))
    assert b"t0ken" not in raw and b"k3y" not in raw
    # sent back as shown: the sealed URL and header are kept; a new header value replaces
    a2 = dict(a, headers={"Authorization": "***", "X-Env": "dev"})
    r2 = svc.rules.edit(P, P.actor(), r["id"], {"actions": [a2]})
    stored = json.loads(store.get(f"rule/{ORG}/{r['id']}") or b"{}")["actions"][0]
    key = f"rule/{ORG}/{r['id']}"
    assert svc.secrets.open(stored["_url"], aad=key).decode() == "https://hooks.example.com/x?key=k3y&a=1"
    assert json.loads(svc.secrets.open(stored["_headers"], aad=key)) == {
        "Authorization": "Bearer t0ken", "X-Env": "dev"}
    assert r2["actions"][0]["headers"]["X-Env"] == "dev"


def test_local_webhooks_refused_unless_allowed(store: Store, tmp_path: Path) -> None:
    svc = services(store, tmp_path, allow_local=False)
    for url in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://169.254.169.254/"):
        with pytest.raises(Forbidden, match="refused unless the operator sets allow_local_clouds"):
            add(svc, actions=[{"action_type": "webhook", "url": url}])


SLACK = "https://hooks.slack.com/services/T000/B000/XOXSECRET"
TEAMS = "https://acme.webhook.office.com/webhookb2/abc@def/IncomingWebhook/TEAMSTOKEN/xyz"


def test_webhook_urls_shown_as_host_and_fingerprint_kept_when_sent_back(store: Store,
                                                                       tmp_path: Path) -> None:
    svc = services(store, tmp_path)
    r = add(svc, actions=[{"action_type": "webhook", "url": SLACK},
                          {"action_type": "webhook", "url": TEAMS, "headers": {"X-Team": "ops"}}])
    slack, teams = (a["url"] for a in r["actions"])
    fp = hashlib.sha256(SLACK.encode()).hexdigest()[:8]
    assert slack == f"https://hooks.slack.com/\u2026 ({fp})"
    assert teams.startswith("https://acme.webhook.office.com/\u2026 (") and teams != slack
    entries = [json.loads(v) for _, v in store.scan("audit/")]
    shown = json.dumps([r, svc.rules.get(P, r["id"]), svc.rules.list_rules(P, parse_query({}))[0], entries])
    for secret in ("XOXSECRET", "T000", "services", "TEAMSTOKEN", "webhookb2"):
        assert secret not in shown, secret
    assert b"XOXSECRET" not in b"".join(v for _, v in store.scan(""))
    # sent back as shown, even in another order: each keeps its own sealed URL
    back = [dict(a) for a in reversed(r["actions"])]
    r2 = svc.rules.edit(P, P.actor(), r["id"], {"actions": back})
    assert [a["url"] for a in r2["actions"]] == [teams, slack]
    key = f"rule/{ORG}/{r['id']}"
    stored = json.loads(store.get(key) or b"{}")["actions"]
    assert [svc.secrets.open(a["_url"], aad=key).decode() for a in stored] == [TEAMS, SLACK]
    assert json.loads(svc.secrets.open(stored[0]["_headers"], aad=key)) == {"X-Team": "ops"}
    # a URL as views show it that this rule does not have is refused, not called
    other = redact_url("https://hooks.slack.com/services/T1/B1/ELSE")
    with pytest.raises(Invalid, match="as views show it"):
        svc.rules.edit(P, P.actor(), r["id"], {"actions": [{"action_type": "webhook", "url": other}]})


def test_rules_stored_before_show_their_webhooks_the_new_way(store: Store, tmp_path: Path) -> None:
    svc = services(store, tmp_path)
    r = add(svc, actions=[{"action_type": "webhook", "url": SLACK}])
    key = f"rule/{ORG}/{r['id']}"
    doc = json.loads(store.get(key) or b"{}")
    doc["_v"] = 1  # as schema 1 stored it: only credentials and query values masked
    doc["actions"][0]["url"] = "https://hooks.slack.com/services/T000/B000/XOXSECRET"
    store.put(key, json.dumps(doc).encode())
    got = svc.rules.get(P, r["id"])["actions"][0]["url"]
    assert got.startswith("https://hooks.slack.com/\u2026 (") and "XOXSECRET" not in got
    # sent back as shown: what is sealed is kept (and shown with its own fingerprint after)
    r2 = svc.rules.edit(P, P.actor(), r["id"], {"actions": [{"action_type": "webhook", "url": got}]})
    assert r2["actions"][0]["url"] == redact_url(SLACK)
    assert b"XOXSECRET" not in (store.get(key) or b"")
    # and a start rewrites every such rule
    doc["_v"] = 1
    store.put(key, json.dumps(doc).encode())
    store.delete("meta/schema/rule")
    assert migrate_store(store, [RULE]) == {"rule": 1}
    assert b"XOXSECRET" not in (store.get(key) or b"")


@pytest.mark.parametrize(("url", "setting"), [
    ("http://10.0.0.5/hook", "allow_private_webhooks"),
    ("http://192.168.1.10:8080/hook", "allow_private_webhooks"),
    ("http://172.20.0.3/hook", "allow_private_webhooks"),
    ("http://100.64.0.9/hook", "allow_private_webhooks"),
    ("http://[fc00::9]/hook", "allow_private_webhooks"),
    ("http://[::ffff:10.0.0.5]/hook", "allow_private_webhooks"),
    ("http://100.100.100.200/latest/meta-data/", "allow_local_clouds"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "allow_local_clouds"),
    ("http://169.254.169.254/latest/meta-data/", "allow_local_clouds"),
    ("http://127.0.0.2:8080/x", "allow_local_clouds"),
    ("http://[::ffff:127.0.0.1]/x", "allow_local_clouds"),
    ("http://0.0.0.0:22/", "allow_local_clouds"),
])
def test_non_public_webhooks_refused(store: Store, tmp_path: Path, url: str, setting: str) -> None:
    svc = services(store, tmp_path, allow_local=False)
    with pytest.raises(Forbidden, match=f"unless the operator sets {setting}") as e:
        add(svc, actions=[{"action_type": "webhook", "url": url}])
    assert e.value.details["field"] == "actions.url"
    # private addresses are allowed with allow_private_webhooks; the host and metadata
    # services still need allow_local_clouds
    private = services(store, tmp_path / "p", allow_local=False, allow_private_webhooks=True)
    body = {"name": f"p-{uuid.uuid4().hex[:6]}", "conditions": [CPU],
            "actions": [{"action_type": "webhook", "url": url}]}
    if setting == "allow_private_webhooks":
        assert private.rules.add(P, P.actor(), body)["actions"][0]["url"].startswith("http")
    else:
        with pytest.raises(Forbidden, match="allow_local_clouds"):
            private.rules.add(P, P.actor(), body)


def test_edit_rename_toggle_delete_audited_and_isolated(store: Store, tmp_path: Path) -> None:
    svc = services(store, tmp_path)
    r = add(svc)
    edited = svc.rules.edit(P, P.actor(), "cpu", {"conditions": [dict(CPU, query=dict(CPU["query"], threshold=75.5))]})
    assert edited["conditions"][0]["query"]["threshold"] == 75.5 and edited["when"] == r["when"]
    assert svc.rules.rename(P, P.actor(), r["id"], "cpu busy")["name"] == "cpu busy"
    assert svc.rules.toggle(P, P.actor(), "cpu busy", "disable")["enabled"] is False
    assert svc.rules.toggle(P, P.actor(), "cpu busy", "enable")["enabled"] is True
    for call in (lambda: svc.rules.get(OTHER, r["id"]),
                 lambda: svc.rules.edit(OTHER, OTHER.actor(), r["id"], {"description": "x"}),
                 lambda: svc.rules.rename(OTHER, OTHER.actor(), r["id"], "mine"),
                 lambda: svc.rules.toggle(OTHER, OTHER.actor(), r["id"], "disable"),
                 lambda: svc.rules.delete(OTHER, OTHER.actor(), r["id"])):
        with pytest.raises(NotFound):
            call()
    assert svc.rules.list_rules(OTHER, parse_query({}))[0] == []
    svc.rules.delete(P, P.actor(), r["id"])
    with pytest.raises(NotFound):
        svc.rules.get(P, r["id"])
    entries = [json.loads(v) for _, v in store.scan("audit/")]
    rule_entries = [(e["action"], e["org"], e["actor"]["id"]) for e in entries
                    if e["action"].startswith("rule.")]
    assert rule_entries == [(a, ORG, "u1") for a in ("rule.add", "rule.edit", "rule.rename",
                                                      "rule.disable", "rule.enable", "rule.delete")]
    assert rule_entries and all(e["target"]["id"] == r["id"] for e in entries if e["action"].startswith("rule."))


def test_nodata_rule_made_once_per_org(store: Store, tmp_path: Path) -> None:
    svc = services(store, tmp_path)
    assert svc.rules.ensure_nodata(ORG) is True
    r = svc.rules.get(P, "nodata")
    assert r["builtin"] == "nodata" and r["conditions"][0]["data_type"] == "nodata"
    assert r["conditions"][0]["window"] == {"start": 60, "stop": 0, "period": "seconds"}
    assert svc.rules.ensure_nodata(ORG) is False
    svc.rules.edit(P, P.actor(), "nodata", {"conditions": [{"data_type": "nodata", "window": {
        "start": 2, "period": "minutes"}}]})
    with pytest.raises(Invalid, match="stays data_type nodata"):
        svc.rules.edit(P, P.actor(), "nodata", {"conditions": [CPU]})
    svc.rules.delete(P, P.actor(), "nodata")
    assert svc.rules.ensure_nodata(ORG) is False  # deleted on purpose: not made again
    with pytest.raises(NotFound):
        svc.rules.get(OTHER, "nodata")


def test_the_nodata_rule_belongs_to_the_organisation_until_someone_edits_it(store: Store,
                                                                            tmp_path: Path) -> None:
    svc = services(store, tmp_path)
    store.put(f"org/{ORG}", dump(ORG_KIND, {"id": ORG, "name": "Acme"}))
    svc.rules.ensure_nodata(ORG)
    key = f"rule/{ORG}/nodata"
    assert owner_problem(svc.accounts, json.loads(store.get(key) or b"{}")) == ""
    r = svc.rules.edit(P, P.actor(), "nodata", {"actions": [{"action_type": "notify"}]})
    assert r["owned_by"] == "a@example.com"
    [entry] = [json.loads(v) for _, v in store.scan("audit/") if b'"rule.edit"' in v]
    assert entry["details"]["owner"] == {"from": "", "to": "a@example.com"}
    assert owner_problem(svc.accounts, json.loads(store.get(key) or b"{}")) == ""
    store.delete(f"member/{ORG}/u1")  # the one who took it over leaves
    assert "no longer a member" in owner_problem(svc.accounts, json.loads(store.get(key) or b"{}"))
