"""What a rule does when an incident fires, resolves (actions with ``on_resolve``) or is
due a reminder (notifications only): e-mail (``notify``), a webhook, a script or command on
the incident's machine (through :class:`controller.exec.service.ExecService`, as
``POST /api/v2/scripts/{script}`` does), or a machine action (through
:class:`controller.clouds.actions.ActionService`). Each outcome — the notification's id, the
job's id, or the error — is recorded on the incident; an action that fails never stops the
others. Actions run only while the rule's owner can act in its organisation (the check
schedules make of theirs): otherwise none runs, the incident records why, and the audit log
has ``incident.skip``. Runs on the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from controller.accounts.model import Principal
from controller.accounts.service import AccountService
from controller.clouds.actions import ActionService
from controller.errors import Invalid, OvercastError
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.exec.service import ExecService, inline_payload_parts
from controller.notify.service import NotifyService
from controller.rules import model as m
from controller.rules.evaluator import finish
from controller.rules.incidents import Act, Incidents
from controller.rules.service import owner_problem
from controller.scripts.service import ScriptService
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store.base import Store
from controller.timeutil import iso

log = logging.getLogger(__name__)

NOTIFICATIONS = ("notify", "webhook")


def rule_principal(rule: dict[str, Any]) -> tuple[Principal, Actor]:
    """Who a rule's actions run as: the rule itself, in its organisation (audited so), once
    :func:`controller.rules.service.owner_problem` found its owner still able to act."""
    org, rid = rule["org"], rule["id"]
    email = str(rule.get("owned_by") or "")
    p = Principal(user={"id": f"rule:{rid}", "email": email or f"rule:{rule['name']}"},
                  org={"id": org}, role="member", auth="rule", credential_id=rid)
    return p, Actor(kind="system", id=f"rule:{rid}", email=email, org=org, via="rules")


class ActionRunner:
    def __init__(self, settings: Settings, store: Store, secrets: SecretBox,
                 notify: NotifyService, exec_: ExecService, scripts: ScriptService,
                 actions: ActionService, incidents: Incidents, accounts: AccountService,
                 writer: Writer) -> None:
        self.accounts = accounts
        self.writer = writer
        self.settings = settings
        self.store = store
        self.secrets = secrets
        self.notify = notify
        self.exec = exec_
        self.scripts = scripts
        self.actions = actions
        self.incidents = incidents

    async def run(self, act: Act) -> None:
        inc, rule = act.incident, act.rule
        todo = [a for a in rule.get("actions", [])
                if act.event == "firing"
                or (act.event == "resolved" and a.get("on_resolve"))
                or (act.event == "reminder" and a["action_type"] in NOTIFICATIONS)]
        notes: list[str] = []
        records: list[dict[str, Any]] = []
        problem = await asyncio.to_thread(owner_problem, self.accounts, rule) if todo else ""
        if problem:
            records = [{"action_type": a["action_type"], "event": act.event, "at": iso(),
                        "status": "skipped", "error": problem} for a in todo]
            await finish(asyncio.to_thread(self._skipped, act, problem, records))
            todo = []
        for a in todo:
            kind = a["action_type"]
            rec: dict[str, Any] = {"action_type": kind, "event": act.event, "at": iso()}
            if act.quiet and kind in NOTIFICATIONS:
                records.append(dict(rec, status="throttled"))
                continue
            try:
                if kind == "notify":
                    n = await self._email(a, act)
                    notes.append(n["id"])
                    rec.update(status=n["status"], notification=n["id"])
                elif kind == "webhook":
                    n = await self._webhook(a, act)
                    notes.append(n["id"])
                    rec.update(status=n["status"], notification=n["id"])
                else:
                    job = await self._job(a, act)
                    rec.update(status="started", job=job["id"])
            except OvercastError as exc:
                rec.update(status="failed", error=exc.message)
            except Exception as exc:  # one action's bug never stops the others
                log.exception("rule %s: action %s failed", rule["id"], kind)
                rec.update(status="failed", error=f"internal error: {type(exc).__name__}")
            records.append(rec)
        if todo and records:
            await finish(asyncio.to_thread(self.incidents.record, inc["org"], inc["id"], notes, records))

    def _skipped(self, act: Act, problem: str, records: list[dict[str, Any]]) -> None:
        """Record on the incident, and in the audit log, that its actions were not run."""
        inc, rule = act.incident, act.rule
        self.incidents.record(inc["org"], inc["id"], [], records)
        change = Change("incident.skip", org=inc["org"], target_kind="incident",
                        target_id=inc["id"], outcome="failed",
                        details={"rule": rule["id"], "rule_name": rule["name"],
                                 "machine": inc["machine"], "event": act.event,
                                 "actions": [r["action_type"] for r in records],
                                 "reason": problem})
        _, actor = rule_principal(rule)
        try:
            self.writer.commit(actor, change)
        except Exception:
            log.exception("recording the skipped actions of rule %s failed", rule["id"])

    # ---- notifications -----------------------------------------------------------------
    def _recipients(self, org: str, a: dict[str, Any]) -> list[str]:
        """The action's addresses and users; none named: the organisation's owners."""
        out = list(a.get("emails") or [])
        users = list(a.get("users") or [])
        if not out and not users:
            users = [k.rsplit("/", 1)[1] for k, raw in self.store.scan(f"member/{org}/")
                     if json.loads(raw).get("role") == "owner"]
        for uid in users:
            raw = self.store.get(f"user/{uid}") if "/" not in uid else None
            if raw is not None and self.store.get(f"member/{org}/{uid}") is not None:
                out.append(str(json.loads(raw).get("email", "")))
        return list(dict.fromkeys(e for e in out if e))

    def _text(self, act: Act) -> tuple[str, str]:
        inc = act.incident
        state = {"firing": "FIRING", "resolved": "RESOLVED", "reminder": "STILL FIRING"}[act.event]
        subject = f"[Overcast] {state}: {inc['rule_name']} on {inc['machine_name'] or inc['subject']}"
        lines = [f"{state}: rule {inc['rule_name']!r}",
                 f"Machine:   {inc['machine_name']} ({inc['machine'] or inc['subject']})",
                 f"Condition: {inc['condition']}",
                 f"Value:     {inc['value']}",
                 f"Started:   {inc['started']}"]
        if inc.get("fired_at"):
            lines.append(f"Firing:    {inc['fired_at']}")
        if act.event == "resolved":
            lines.append(f"Resolved:  {inc['resolved_at']} ({inc.get('reason', '')})")
        lines += ["", f"Incident:  {self.settings.public_url}/api/v2/incidents/{inc['id']}"]
        return subject, "\n".join(lines) + "\n"

    def _context(self, act: Act) -> dict[str, Any]:
        inc = act.incident
        return {"incident": inc["id"], "rule": inc["rule"], "machine": inc["machine"],
                "event": act.event}

    async def _email(self, a: dict[str, Any], act: Act) -> dict[str, Any]:
        org = act.incident["org"]
        to = await asyncio.to_thread(self._recipients, org, a)
        subject, text = self._text(act)
        _, actor = rule_principal(act.rule)
        return await self.notify.email(org, to, subject, text, context=self._context(act), actor=actor)

    async def _webhook(self, a: dict[str, Any], act: Act) -> dict[str, Any]:
        inc, rule = act.incident, act.rule
        key = m.rule_key(rule["org"], rule["id"])
        url = self.secrets.open(a["_url"], aad=key).decode()
        headers = json.loads(self.secrets.open(a["_headers"], aad=key))
        view = {k: v for k, v in inc.items() if not k.startswith("_") and k != "org"}
        body: Any
        if a.get("data"):
            body = a["data"]
        else:
            body = dict(a.get("json") or {})
            body.update(event=act.event, incident=view,
                        rule={"id": rule["id"], "name": rule["name"]})
        _, actor = rule_principal(rule)
        return await self.notify.webhook(inc["org"], url, a.get("method", "POST"), headers, body,
                                         secret_headers=a.get("secret_headers", ()),
                                         context=self._context(act), actor=actor)

    # ---- jobs --------------------------------------------------------------------------
    async def _job(self, a: dict[str, Any], act: Act) -> dict[str, Any]:
        inc, rule = act.incident, act.rule
        machine = inc["machine"]
        if not machine:
            raise Invalid(f"{a['action_type']} needs a machine: this incident is about "
                          f"{inc['subject']}", field="action_type")
        p, actor = rule_principal(rule)
        kind = a["action_type"]
        if kind != "run_script":
            params = {"size": a["params"]} if kind == "resize" else {}
            return self.actions.machine_action(p, actor, machine, kind, params)
        body = {"machine": machine, "params": a.get("params") or ""}
        describe = {"rule": rule["id"], "incident": inc["id"]}
        if a.get("script_type") == "inline":
            content, digest = inline_payload_parts(a["command"])
            payload = self.exec.payload(body, content, digest, interpreter="/bin/sh")
            routes = await asyncio.to_thread(self.exec.routes, p, body)
            return self.exec.start(p, actor, "command.run", "command", digest[:16], routes, payload,
                                   dict(describe, command=a["command"][:1000]))
        view, content = await asyncio.to_thread(self.scripts.payload, p, a["script"])
        payload = self.exec.payload(body, content, view["sha256"], entrypoint=view.get("entrypoint") or "",
                                    ansible=view.get("exec_type") == "ansible")
        routes = await asyncio.to_thread(self.exec.routes, p, body)
        return self.exec.start(p, actor, "script.run", "script", view["id"], routes, payload,
                               dict(describe, script=view["id"], name=view["name"],
                                    sha256=view["sha256"]))
