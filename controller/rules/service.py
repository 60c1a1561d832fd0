"""Rules of an organisation (Mist v2 ``/api/v2/rules``): list, show, add, edit, rename,
enable/disable, delete; and each organisation's "no data" rule, made once when it first has
a monitored machine. Reads and writes the store (blocking but quick; checking a webhook's
host resolves its name: call add and edit in a thread). Every change goes through the
writer; sealed webhook URLs and headers never leave it."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from controller.accounts.model import Principal
from controller.accounts.service import AccountService
from controller.errors import Conflict, Forbidden, Invalid, NotFound
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.listing import Query, apply
from controller.machines.model import key as machine_key
from controller.monitor.tsdb import TSDB
from controller.notify.targets import url_refusal
from controller.rules import model as m
from controller.rules.parse import Context, rule_fields
from controller.scripts.service import ScriptService
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import by_ref, dump, load
from controller.timeutil import iso

RULES = Actor(kind="system", id="rules", via="system")


def owner_problem(accounts: AccountService, rule: dict[str, Any]) -> str:
    """Why the rule's owner cannot act for it any more ("" when they can): gone, disabled, or
    no longer a member of the rule's organisation, as schedules check their owner. The
    built-in "no data" rule belongs to the organisation until someone edits it (the editor
    becomes its owner)."""
    uid, email = str(rule.get("_owner") or ""), str(rule.get("owned_by") or "")
    if not uid and not email:
        if rule.get("builtin"):
            return ""
        return "the rule has no owner: its actions are not run (edit the rule to take it over)"
    user = accounts.get_user(uid) if uid and "/" not in uid else (
        accounts.user_by_email(email) if email else None)
    if user is None or user.get("disabled"):
        return (f"the rule's owner {email or uid} no longer exists or is disabled: its actions "
                "are not run (edit the rule to take it over)")
    if accounts.get_org(str(rule["org"])) is None or accounts.membership(
            str(rule["org"]), str(user["id"])) is None:
        return (f"the rule's owner {email or uid} is no longer a member of this organisation: "
                "its actions are not run (edit the rule to take it over)")
    return ""


def view(doc: dict[str, Any]) -> dict[str, Any]:
    """A rule as the API shows it: no store-only fields, nothing sealed."""
    out = {k: v for k, v in doc.items() if not k.startswith("_") and k != "org"}
    out["actions"] = [{k: v for k, v in a.items() if not k.startswith("_")}
                      for a in doc.get("actions", [])]
    return out


class RuleService:
    def __init__(self, settings: Settings, store: Store, writer: Writer, secrets: SecretBox,
                 tsdb: TSDB, accounts: AccountService, scripts: ScriptService) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.secrets = secrets
        self.tsdb = tsdb
        self.accounts = accounts
        self.scripts = scripts

    # ---- reading -------------------------------------------------------------------------
    def _load(self, p: Principal, ref: str) -> tuple[dict[str, Any], bytes]:
        found = by_ref(self.store, m.RULE, f"rule/{p.org_id}/", ref) if p.org_id else None
        if found is None:
            raise NotFound("no such rule", {"id": ref})
        return found

    def list_rules(self, p: Principal, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        docs = sorted((load(m.RULE, raw) for _, raw in self.store.scan(f"rule/{p.org_id}/")),
                      key=lambda d: d.get("_created_at", 0))
        return apply((view(d) for d in docs), query)

    def get(self, p: Principal, ref: str) -> dict[str, Any]:
        return view(self._load(p, ref)[0])

    # ---- changes -------------------------------------------------------------------------
    def _context(self, org: str, key: str) -> Context:
        def metrics() -> set[str]:
            return set(self.tsdb.metrics(org))

        def missing(ids: list[str]) -> list[str]:
            raws = self.store.get_many([machine_key(org, i) for i in ids if "/" not in i])
            found = {json.loads(r)["id"] for r in raws if r}
            return [i for i in ids if i not in found]

        def script(ref: str) -> dict[str, Any]:
            p = Principal(user={"id": ""}, org={"id": org}, role="member", auth="rule",
                          credential_id="")
            try:
                return self.scripts.get(p, ref)
            except NotFound:
                raise Invalid(f"no such script: {ref!r}", field="actions.script") from None

        def member(ref: str) -> str:
            user = self.accounts.user_by_email(ref) if "@" in ref else self.accounts.get_user(ref)
            if user is None or self.accounts.membership(org, user["id"]) is None:
                raise Invalid(f"{ref!r} is not a member of this organisation", field="actions.users")
            return str(user["id"])

        def check_url(url: str) -> None:
            why = url_refusal(url, self.settings.allow_private_webhooks,
                              self.settings.allow_local_clouds)
            if why:
                raise Forbidden(why, {"field": "actions.url"})

        return Context(metrics=metrics, missing_machines=missing, script=script, member=member,
                       check_url=check_url,
                       seal=lambda text: self.secrets.seal(text, aad=key),
                       open=lambda token: self.secrets.open(token, aad=key).decode())

    def add(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        """Add a rule. Raises BadRequest (a wrong type), Invalid, Forbidden (a webhook to the
        controller's host), Conflict (the name is taken)."""
        if not p.org_id:
            raise Invalid("you belong to no organisation", field="org")
        name = _name(body.get("name"))
        self._unique(p.org_id, name, "")
        if self.store.count(f"rule/{p.org_id}/") >= m.MAX_RULES:
            raise Invalid(f"an organisation may have at most {m.MAX_RULES} rules", field="name")
        rid = uuid.uuid4().hex
        key = m.rule_key(p.org_id, rid)
        fields = rule_fields(body, self._context(p.org_id, key))
        email = str(p.user.get("email", ""))
        doc: dict[str, Any] = {"id": rid, "org": p.org_id, "name": name, "enabled": True,
                               **fields, "builtin": "", "created": iso(), "created_by": email,
                               "owned_by": email, "_owner": p.user_id, "_created_at": time.time()}
        self._commit(actor, "rule.add", doc, key, None)
        return view(doc)

    def edit(self, p: Principal, actor: Actor, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """Change a rule (EditRuleRequest: any of its parts; ``name`` too). A webhook action
        sent back as shown (its URL redacted, secret headers ``***``) keeps what is sealed.
        A rule whose owner can no longer act for it (or that has none: the "no data" rule)
        becomes the editor's: its actions run again, as the editor's rule."""
        doc, raw = self._load(p, ref)
        key = m.rule_key(p.org_id, doc["id"])
        new = dict(doc, **rule_fields(body, self._context(p.org_id, key), doc))
        takeover: dict[str, str] = {}
        if not (doc.get("_owner") or doc.get("owned_by")) or owner_problem(self.accounts, doc):
            email = str(p.user.get("email", ""))
            takeover = {"from": str(doc.get("owned_by") or ""), "to": email}
            new.update(owned_by=email, _owner=p.user_id)
        if "name" in body:
            new["name"] = _name(body["name"])
            self._unique(p.org_id, new["name"], doc["id"])
        if new["builtin"] == m.NODATA_ID and new["conditions"][0]["data_type"] != "nodata":
            raise Invalid("the no-data rule watches for missing data: its condition stays "
                          "data_type nodata (change its window, selectors and actions)",
                          field="conditions")
        changed: Any = sorted(set(body) & set(new))
        if takeover:
            changed = [*changed, "owned_by"]
        self._commit(actor, "rule.edit", new, key, raw, changed=changed, owner=takeover)
        return view(new)

    def rename(self, p: Principal, actor: Actor, ref: str, name: str) -> dict[str, Any]:
        doc, raw = self._load(p, ref)
        new = dict(doc, name=_name(name))
        self._unique(p.org_id, new["name"], doc["id"])
        self._commit(actor, "rule.rename", new, m.rule_key(p.org_id, doc["id"]), raw,
                     changed={"from": doc["name"], "to": new["name"]})
        return view(new)

    def toggle(self, p: Principal, actor: Actor, ref: str, action: str) -> dict[str, Any]:
        if action not in ("enable", "disable"):
            raise Invalid("action must be enable or disable", field="action")
        doc, raw = self._load(p, ref)
        new = dict(doc, enabled=action == "enable")
        if new["enabled"] != doc.get("enabled", True):
            self._commit(actor, f"rule.{action}", new, m.rule_key(p.org_id, doc["id"]), raw)
        return view(new)

    def delete(self, p: Principal, actor: Actor, ref: str) -> None:
        """Delete a rule; its open incidents are resolved by the evaluator's next round."""
        doc, raw = self._load(p, ref)
        key = m.rule_key(p.org_id, doc["id"])
        change = Change("rule.delete", org=p.org_id, target_kind="rule", target_id=doc["id"],
                        details={"name": doc["name"]})
        change.delete(key).expect(key, raw)
        change.event("deleted", "rule", doc["id"], {"name": doc["name"]})
        self.writer.commit(actor, change)

    def _commit(self, actor: Actor, action: str, doc: dict[str, Any], key: str,
                raw: bytes | None, changed: Any = None, owner: dict[str, str] | None = None) -> None:
        details: dict[str, Any] = {"name": doc["name"], "enabled": doc.get("enabled", True)}
        if action in ("rule.add", "rule.edit"):
            details.update(conditions=doc["conditions"], selectors=doc["selectors"],
                           actions=view(doc)["actions"], when=doc["when"],
                           trigger_after=doc["trigger_after"])
        if changed is not None:
            details["changed"] = changed
        if owner:
            details["owner"] = owner
        change = Change(action, org=doc["org"], target_kind="rule", target_id=doc["id"],
                        details=details)
        change.put(key, dump(m.RULE, doc)).expect(key, raw)
        change.event("created" if raw is None else "changed", "rule", doc["id"],
                     {"name": doc["name"], "enabled": doc.get("enabled", True)})
        self.writer.commit(actor, change)

    def _unique(self, org: str, name: str, except_id: str) -> None:
        for _, v in self.store.scan(f"rule/{org}/"):
            d = json.loads(v)
            if d.get("name") == name and d["id"] != except_id:
                raise Conflict(f"a rule named {name!r} exists already", {"field": "name"})

    # ---- the "no data" rule ---------------------------------------------------------------
    def ensure_nodata(self, org: str) -> bool:
        """Make ``org``'s "no data" rule unless it was made before; True when made now."""
        if self.store.get(m.nodata_mark(org)) is not None:
            return False
        seconds = max(60, m.NODATA_INTERVALS * self.settings.metric_interval)
        key = m.rule_key(org, m.NODATA_ID)
        doc: dict[str, Any] = {
            "id": m.NODATA_ID, "org": org, "name": "no data", "enabled": True,
            "description": "an agent host that sent no metrics for "
                           f"{m.NODATA_INTERVALS} intervals (disable or edit it as you like)",
            "conditions": [{"data_type": "nodata", "query": {"target": m.HEARTBEAT_METRIC},
                            "window": {"start": seconds, "stop": 0, "period": "seconds"}}],
            "selectors": [], "actions": [],
            "when": {"schedule_type": "interval", "every": max(10, self.settings.metric_interval),
                     "period": "seconds"},
            "trigger_after": {"offset": 0, "period": "seconds"},
            "notify_every": {"offset": 0, "period": "seconds"},
            "builtin": m.NODATA_ID, "created": iso(), "created_by": "", "owned_by": "",
            "_created_at": time.time()}
        change = Change("rule.add", org=org, target_kind="rule", target_id=m.NODATA_ID,
                        details={"name": doc["name"], "builtin": m.NODATA_ID})
        change.put(key, dump(m.RULE, doc)).expect(key, None).put(m.nodata_mark(org), b"1")
        change.event("created", "rule", m.NODATA_ID, {"name": doc["name"], "enabled": True})
        try:
            self.writer.commit(RULES, change)
        except Conflict:
            return False
        return True


def _name(value: Any) -> str:
    if not isinstance(value, str):
        from controller.errors import BadRequest

        raise BadRequest("name must be a string", field="name")
    name = value.strip()
    if not name or len(name) > 200:
        raise Invalid("name must have 1 to 200 characters", field="name")
    return name
