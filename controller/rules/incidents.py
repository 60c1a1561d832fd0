"""Incidents: one per rule and subject (a machine, or what a log entry was about) while the
rule's conditions hold. ``pending`` until they have held ``trigger_after``, then
``firing`` (the rule's actions run), ``resolved`` when they stop holding, the machine is no
longer selected or has no data, or the rule is disabled or deleted. A pending incident whose
conditions stop before ``trigger_after`` is resolved with ``fired`` false (no action ran).

While firing, notifications repeat every ``notify_every`` (when set), and a new firing of the
same rule and machine within ``notify_every`` — and at least ``notify_min_interval`` (the
setting: 300 s) — of the last notification sends none (``throttled``): a flapping condition
notifies at most that often. When each rule and machine was last notified is kept in the
store (``incnotified/``), so a restart does not forget it, and dropped once it can no
longer throttle anything. Every state change is audited (``incident.pending``, ``incident.fire``,
``incident.resolve``, ``incident.remind``). Writers serialise on one lock: the evaluator
writes from a thread, the actions' outcomes are recorded from the event loop."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller.accounts.model import Principal
from controller.errors import Invalid, NotFound
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.listing import Query, apply
from controller.rules import model as m
from controller.rules.parse import seconds
from controller.rules.service import RULES
from controller.store.base import Batch, Store
from controller.store.docs import dump, load
from controller.timeutil import iso, parse_iso

MAX_ACTIONS_KEPT = 200


@dataclass
class Finding:
    """A subject whose conditions hold now, with the values that made them hold."""

    subject: str           # machine id, or "<kind>:<id>" for log entries about other things
    machine: str           # the machine id ("" when the subject is no machine)
    name: str
    value: float | None
    values: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Act:
    """What the actions runner does after a step: ``event`` is firing, resolved or reminder."""

    event: str
    incident: dict[str, Any]
    rule: dict[str, Any]
    quiet: bool = False    # notifications throttled: other actions still run


def describe(rule: dict[str, Any]) -> str:
    parts = []
    for c in rule.get("conditions", []):
        w = c["window"]
        span = f"{w['start']} {w['period']}" + (f" (to {w['stop']} ago)" if w.get("stop") else "")
        if c["data_type"] == "nodata":
            parts.append(f"no data for {span}")
            continue
        q = c["query"]
        sym = m.OPERATORS[q["operator"]]
        parts.append(f"{q['aggregation']}({q['target']}) over {span} {sym} {q['threshold']:g}")
    return " and ".join(parts)


def notified_key(org: str, rid: str, subject: str) -> str:
    return f"incnotified/{org}/{rid}/{subject}"


class Incidents:
    def __init__(self, store: Store, writer: Writer, min_interval: float = 0.0) -> None:
        self.store = store
        self.writer = writer
        self.min_interval = float(min_interval)  # the floor between firings' notifications
        self.lock = threading.Lock()
        self.open: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._notified: dict[tuple[str, str, str], float] = {}  # for throttling across incidents
        for key, raw in store.scan("incnotified/"):
            _, org, rid, subject = key.split("/", 3)
            self._notified[(org, rid, subject)] = float(raw.decode())
        for key, raw in store.scan("incopen/"):
            _, org, rid, subject = key.split("/", 3)
            doc_raw = store.get(m.incident_key(org, raw.decode()))
            if doc_raw is None:
                store.delete(key)
                continue
            doc = load(m.INCIDENT, doc_raw)
            self.open[(org, rid, subject)] = doc
            if doc.get("_notified_at"):
                k = (org, rid, subject)
                self._notified[k] = max(self._notified.get(k, 0.0), float(doc["_notified_at"]))

    def open_subjects(self, org: str, rid: str) -> list[str]:
        return [s for (o, r, s) in self.open if o == org and r == rid]

    def open_rules(self) -> set[tuple[str, str]]:
        return {(o, r) for (o, r, _) in self.open}

    # ---- the state machine -------------------------------------------------------------
    def step(self, rule: dict[str, Any], found: list[Finding], reasons: dict[str, str],
             now: float) -> list[Act]:
        """Apply one evaluation of ``rule``: ``found`` holds now; every other open incident
        of the rule resolves, for ``reasons[subject]`` (default: no longer holds)."""
        org, rid = rule["org"], rule["id"]
        wait = seconds(rule.get("trigger_after") or {})
        every = seconds(rule.get("notify_every") or {})
        floor = max(float(every), self.min_interval)
        acts: list[Act] = []
        changes: list[Change] = []
        with self.lock:
            seen = set()
            for f in found:
                seen.add(f.subject)
                k = (org, rid, f.subject)
                got = self.open.get(k)
                opened = got is None
                inc = self._new(rule, f, now) if got is None else got
                if opened:
                    self.open[k] = inc
                    if wait > 0:
                        changes.append(self._change(inc, "incident.pending", rule, opened=True))
                        continue
                inc.update(value=f.value, values=f.values)
                if inc["state"] == "pending" and now - inc["_started_at"] >= wait:
                    last = self._notified.get(k, 0.0)
                    quiet = floor > 0 and now - last < floor
                    inc.update(state="firing", fired=True, fired_at=iso(now), _fired_at=now,
                               updated=iso(now), throttled=quiet)
                    if not quiet:
                        inc.update(notified_at=iso(now), _notified_at=now)
                    change = self._change(inc, "incident.fire", rule, opened=opened)
                    if not quiet:
                        self._notify(change, k, now)
                    changes.append(change)
                    acts.append(Act("firing", dict(inc), rule, quiet))
                elif (inc["state"] == "firing" and every > 0
                      and now - float(inc.get("_notified_at") or inc["_fired_at"]) >= every):
                    inc.update(notified_at=iso(now), _notified_at=now, updated=iso(now),
                               reminders=int(inc.get("reminders", 0)) + 1)
                    change = self._change(inc, "incident.remind", rule)
                    self._notify(change, k, now)
                    changes.append(change)
                    acts.append(Act("reminder", dict(inc), rule))
            for subject in self.open_subjects(org, rid):
                if subject in seen:
                    continue
                act = self._resolve((org, rid, subject), rule,
                                    reasons.get(subject, "the conditions no longer hold"), now,
                                    changes)
                if act is not None:
                    acts.append(act)
            if changes:
                self.writer.commit_many(RULES, changes)
        return acts

    def _notify(self, change: Change, k: tuple[str, str, str], now: float) -> None:
        """Remember (in memory and in ``change``) that ``k`` was notified at ``now``."""
        self._notified[k] = now
        change.put(notified_key(*k), repr(now).encode())

    def prune_notified(self, now: float, horizon: Callable[[str, str], float]) -> int:
        """Forget when rule and subject pairs were notified once that can throttle nothing:
        older than ``horizon(org, rule)`` seconds (0 for a rule that is gone or disabled;
        its open incidents keep theirs). Returns how many were forgotten."""
        with self.lock:
            doomed = [k for k, t in self._notified.items()
                      if k not in self.open and now - t >= horizon(k[0], k[1])]
            for k in doomed:
                del self._notified[k]
        if doomed:
            self.store.write(Batch(deletes={notified_key(*k) for k in doomed}))
        return len(doomed)

    def close_rule(self, org: str, rid: str, rule: dict[str, Any] | None, reason: str,
                   now: float) -> list[Act]:
        """Resolve every open incident of a rule that was disabled or deleted."""
        changes: list[Change] = []
        acts: list[Act] = []
        with self.lock:
            for subject in self.open_subjects(org, rid):
                k = (org, rid, subject)
                r = rule or {"org": org, "id": rid, "name": self.open[k]["rule_name"], "actions": []}
                act = self._resolve(k, r, reason, now, changes)
                if act is not None:
                    acts.append(act)
            if changes:
                self.writer.commit_many(RULES, changes)
        return acts

    def _resolve(self, k: tuple[str, str, str], rule: dict[str, Any], reason: str, now: float,
                 changes: list[Change]) -> Act | None:
        inc = self.open.pop(k)
        fired = inc["state"] == "firing"
        inc.update(state="resolved", resolved_at=iso(now), updated=iso(now), reason=reason)
        changes.append(self._change(inc, "incident.resolve", rule, closed=True))
        return Act("resolved", dict(inc), rule, bool(inc.get("throttled"))) if fired else None

    def _new(self, rule: dict[str, Any], f: Finding, now: float) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "org": rule["org"], "rule": rule["id"],
                "rule_name": rule["name"], "machine": f.machine, "machine_name": f.name,
                "subject": f.subject, "state": "pending", "fired": False, "condition": describe(rule),
                "started": iso(now), "fired_at": "", "resolved_at": "", "updated": iso(now),
                "value": f.value, "values": f.values, "notifications": [], "actions": [],
                "notified_at": "", "reminders": 0, "throttled": False, "reason": "",
                "_started_at": now}

    def _change(self, inc: dict[str, Any], action: str, rule: dict[str, Any],
                opened: bool = False, closed: bool = False) -> Change:
        org = inc["org"]
        details = {"rule": inc["rule"], "rule_name": inc["rule_name"], "machine": inc["machine"],
                   "state": inc["state"], "value": inc["value"]}
        if inc.get("reason"):
            details["reason"] = inc["reason"]
        change = Change(action, org=org, target_kind="incident",
                        target_id=inc["id"], details=details)
        change.put(m.incident_key(org, inc["id"]), dump(m.INCIDENT, inc))
        ok = m.open_key(org, inc["rule"], inc["subject"])
        if opened:
            change.put(ok, inc["id"].encode())
        if closed:
            change.delete(ok)
        change.event("created" if opened else "changed", "incident", inc["id"],
                     {"state": inc["state"], "rule": inc["rule"], "machine": inc["machine"]})
        return change

    def record(self, org: str, incident_id: str, notifications: list[str],
               actions: list[dict[str, Any]]) -> None:
        """Link what a firing, reminder or resolution did (notification ids, jobs, errors)
        to the incident. Not audited itself: each of those is audited where it happens."""
        with self.lock:
            inc = next((d for d in self.open.values() if d["id"] == incident_id), None)
            if inc is None:
                raw = self.store.get(m.incident_key(org, incident_id))
                if raw is None:
                    return
                inc = load(m.INCIDENT, raw)
            inc["notifications"] = [*inc.get("notifications", []), *notifications][-MAX_ACTIONS_KEPT:]
            inc["actions"] = [*inc.get("actions", []), *actions][-MAX_ACTIONS_KEPT:]
            self.store.write(Batch(puts={m.incident_key(org, incident_id): dump(m.INCIDENT, inc)}))

    # ---- reading -----------------------------------------------------------------------
    def get(self, p: Principal, incident_id: str) -> dict[str, Any]:
        raw = (self.store.get(m.incident_key(p.org_id, incident_id))
               if p.org_id and "/" not in incident_id else None)
        if raw is None:
            raise NotFound("no such incident", {"id": incident_id})
        return _view(self._fresh(load(m.INCIDENT, raw)))

    def _fresh(self, doc: dict[str, Any]) -> dict[str, Any]:
        """An open incident as the evaluator holds it (its latest value), else as stored."""
        if doc["state"] != "resolved":
            mem = self.open.get((doc["org"], doc["rule"], doc["subject"]))
            if mem is not None and mem["id"] == doc["id"]:
                return dict(mem)
        return doc

    def list(self, p: Principal, query: Query, *, state: str = "", rule: str = "",
             machine: str = "", since: str = "", until: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The organisation's incidents, newest first unless sorted otherwise; ``state`` may
        also be ``open`` (pending or firing)."""
        if state and state not in (*m.STATES, "open"):
            raise Invalid("state must be pending, firing, resolved or open", field="state")
        t0, t1 = _time(since, "since"), _time(until, "until")
        out = []
        for _, raw in self.store.scan(f"incident/{p.org_id}/"):
            d = json.loads(raw)
            if state and not (d["state"] == state or (state == "open" and d["state"] != "resolved")):
                continue
            if (rule and d["rule"] != rule and d["rule_name"] != rule) or (machine and machine not in (d["machine"], d["machine_name"])):
                continue
            if (t0 is not None and d["_started_at"] < t0) or (t1 is not None and d["_started_at"] > t1):
                continue
            out.append(_view(self._fresh(d)))
        out.sort(key=lambda d: d["started"], reverse=True)
        return apply(out, query, text_fields=("rule_name", "machine_name", "id", "condition"))

    def prune(self, older_than: float) -> int:
        """Delete incidents resolved before ``older_than`` (epoch): one audited change per
        organisation and thousand incidents."""
        doomed: dict[str, list[str]] = {}
        for key, raw in self.store.scan("incident/"):
            d = json.loads(raw)
            if d["state"] == "resolved" and d.get("resolved_at") and parse_iso(d["resolved_at"]) < older_than:
                doomed.setdefault(d["org"], []).append(key)
        return prune_keys(self.writer, RULES, "incident.prune", doomed)


def prune_keys(writer: Writer, actor: Actor, action: str, doomed: dict[str, list[str]]) -> int:
    n = 0
    for org, keys in doomed.items():
        for i in range(0, len(keys), 1000):
            part = keys[i:i + 1000]
            change = Change(action, org=org, target_kind=action.split(".")[0],
                            details={"count": len(part), "retention": "incident_retention"})
            for k in part:
                change.delete(k)
            writer.commit(actor, change)
            n += len(part)
    return n


def _view(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("_") and k != "org"}


def _time(value: str, name: str) -> float | None:
    if not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        raise Invalid(f"{name} must be an ISO 8601 time, e.g. 2024-05-01T12:00:00Z", field=name) from None

