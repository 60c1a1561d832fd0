"""Machine expiration, built on schedules: a date after which the machine is stopped or
destroyed, with an e-mail reminder to whoever set it some time before. Setting it makes (or
replaces) a one-off schedule of the machine (its id derived from the machine's, so there is
one per machine; ``missed: run_once``, so an expiration due while the controller was down
still happens once on start); the machine's ``expiration`` field shows it; clearing it
deletes the schedule. Both are one atomic, audited change (``machine.expiration``).

Mist's two shapes are taken: ``{date, action, notify: seconds}`` (EditMachineRequest) and
``{date, action, notify: {period, value}, notify_msg}`` (Expiration, on create)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from controller.accounts.model import Principal
from controller.clouds.actions import MACHINE_VERBS, ActionService
from controller.errors import BadRequest, Conflict, NotFound
from controller.events.model import Actor
from controller.events.writer import Change
from controller.machines.model import MACHINE
from controller.machines.model import key as machine_key
from controller.schedules.model import SCHEDULE, runs_prefix, schedule_key, state_key
from controller.schedules.when import PERIODS, parse_time
from controller.store.base import Store
from controller.store.docs import dump, load
from controller.timeutil import iso

if TYPE_CHECKING:
    from controller.schedules.service import ScheduleService

ACTIONS = ("stop", "destroy")
MAX_NOTIFY = 366 * 86400


def expiration_id(org: str, machine_id: str) -> str:
    return hashlib.sha256(f"expiration/{org}/{machine_id}".encode()).hexdigest()[:32]


def set_machine_field(store: Store, change: Change, org: str, machine_id: str,
                      value: Any) -> None:
    """Put the machine's ``expiration`` field into ``change`` (refused, Conflict, should the
    machine change meanwhile: a poll, a tag); nothing when the machine is gone."""
    k = machine_key(org, machine_id)
    raw = store.get(k)
    if raw is None:
        return
    doc = load(MACHINE, raw)
    doc["expiration"] = value
    change.put(k, dump(MACHINE, doc)).expect(k, raw)


def _notify_seconds(raw: Any) -> int:
    if raw in (None, "", 0):
        return 0
    if isinstance(raw, dict):
        period, value = raw.get("period"), raw.get("value")
        if period not in PERIODS or isinstance(value, bool) or not isinstance(value, int) \
                or value < 1:
            raise BadRequest("expiration.notify must be {period: minutes|hours|days, value: N}",
                             field="expiration.notify")
        seconds = value * PERIODS[period]
    elif isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        seconds = raw
    else:
        raise BadRequest("expiration.notify must be seconds before the date (or {period, "
                         "value})", field="expiration.notify")
    if seconds > MAX_NOTIFY:
        raise BadRequest("expiration.notify must be at most a year", field="expiration.notify")
    return seconds


class Expirations:
    def __init__(self, svc: ScheduleService, actions: ActionService) -> None:
        self.svc = svc
        self.store = svc.store
        self.actions = actions

    def set(self, p: Principal, actor: Actor, machine_id: str,
            raw: dict[str, Any] | None) -> dict[str, Any] | str:
        """Set (``raw``) or clear (None or {}) the expiration of a machine of the caller's
        organisation; returns the machine's expiration field. Raises NotFound, BadRequest
        naming the field, Unsupported (its cloud cannot stop or destroy it)."""
        for attempt in range(3):  # a poll may rewrite the machine meanwhile: read it again
            try:
                return self._set(p, actor, machine_id, raw)
            except Conflict:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _set(self, p: Principal, actor: Actor, machine_id: str,
             raw: dict[str, Any] | None) -> dict[str, Any] | str:
        k = machine_key(p.org_id, machine_id) if p.org_id and "/" not in machine_id else ""
        mraw = self.store.get(k) if k else None
        if mraw is None:
            raise NotFound("no such machine", {"id": machine_id})
        m = load(MACHINE, mraw)
        org, sid = p.org_id, expiration_id(p.org_id, m["id"])
        old_raw = self.store.get(schedule_key(org, sid))
        change = Change("machine.expiration", org=org, target_kind="machine", target_id=m["id"],
                        details={"name": m.get("name", ""), "schedule": sid})
        if not raw:
            if old_raw is None and not m.get("expiration"):
                return ""
            change.details["cleared"] = True
            if old_raw is not None:
                change.delete(schedule_key(org, sid)).expect(schedule_key(org, sid), old_raw)
                change.delete(state_key(org, sid))
                for rk, _ in self.store.scan(runs_prefix(org, sid), keys_only=True):
                    change.delete(rk)
            change.put(k, dump(MACHINE, dict(m, expiration=""))).expect(k, mraw)
            change.event("changed", "machine", m["id"], {"expiration": ""})
            self.svc.writer.commit(actor, change)
            self.svc.on_change(org, sid)
            return ""
        cfg, field = self._schedule(p, m, sid, raw)
        now = self.svc.clock()
        if old_raw is not None:  # replaced: the old one's creation stays on record
            old = load(SCHEDULE, old_raw)
            cfg["created"], cfg["created_by"] = old.get("created", cfg["created"]), old.get(
                "created_by", cfg["created_by"])
        from controller.schedules.service import new_state

        state = new_state(now)
        self.svc.plan(cfg, state, now)
        self.svc.put(change, org, cfg, state, old_raw)
        change.put(k, dump(MACHINE, dict(m, expiration=field))).expect(k, mraw)
        change.details.update(date=field["date"], action=field["action"],
                              notify=field["notify"])
        change.event("changed", "machine", m["id"], {"expiration": field})
        self.svc.writer.commit(actor, change)
        self.svc.on_change(org, sid)
        return field

    def _schedule(self, p: Principal, m: dict[str, Any], sid: str,
                  raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(raw, dict):
            raise BadRequest("expiration must be {date, action: stop|destroy, notify}",
                             field="expiration")
        for name in raw:
            if name not in ("date", "action", "notify", "notify_msg"):
                raise BadRequest(f"unknown field expiration.{name}", field=f"expiration.{name}")
        action = raw.get("action")
        if action not in ACTIONS:
            raise BadRequest("expiration.action must be stop or destroy", field="expiration.action")
        at = parse_time(raw.get("date"), "expiration.date")
        now = self.svc.clock()
        if at <= now:
            raise BadRequest(f"expiration.date {raw.get('date')} is in the past",
                             field="expiration.date")
        notify = _notify_seconds(raw.get("notify"))
        msg = raw.get("notify_msg") or ""
        if not isinstance(msg, str) or len(msg) > 10_000:
            raise BadRequest("expiration.notify_msg must be text", field="expiration.notify_msg")
        self.actions.cloud_for(p, m, MACHINE_VERBS[action], action)  # Unsupported: 422
        email = str(p.user.get("email", ""))
        name = str(m.get("name") or m["id"])
        cfg: dict[str, Any] = {
            "id": sid, "name": f"expiration of {name[:150]} ({m['id'][:8]})",
            "description": f"{action} the machine {name} at its expiration date",
            "tags": {}, "enabled": True,
            "selectors": [{"type": "machines", "ids": [m["id"]]}],
            "actions": [{"action_type": action}],
            "when": {"schedule_type": "one_off", "datetime": iso(at), "timezone": "UTC"},
            "start_after": "", "expires": "", "max_run_count": None, "run_immediately": False,
            "missed": "run_once",
            "reminder": ({"message": msg.strip(), "when": {"unit": "seconds", "value": notify}}
                         if notify else None),
            "expiration_for": m["id"], "machine_name": name, "created": iso(now),
            "created_by": email, "owned_by": email, "_owner": p.user_id}
        field = {"id": sid, "date": iso(at), "action": action, "notify": notify,
                 "notify_msg": msg.strip()}
        return cfg, field
