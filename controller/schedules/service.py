"""The schedules of an organisation: add, list, show, edit, enable/disable, delete, and the
record of their runs. Every change goes through the writer (audited, with its event); the
state the scheduler keeps (next run, counts) is recomputed here when timing changes, and the
scheduler is told (``on_change``). Reads and writes are quick store calls: callers on the
event loop may call them directly (``list`` and ``runs`` read many: call them in a thread)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from controller.accounts.model import Principal
from controller.accounts.service import AccountService
from controller.errors import BadRequest, Conflict, Invalid, NotFound
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.listing import Query, apply
from controller.schedules import spec
from controller.schedules.model import (
    SCHEDRUN,
    SCHEDSTATE,
    SCHEDULE,
    runs_prefix,
    schedule_key,
    state_key,
)
from controller.schedules.when import Window, compile_when, next_occurrence, parse_time
from controller.scripts.service import ScriptService
from controller.settings import Settings
from controller.store.base import Store
from controller.store.docs import by_ref, dump, load, public
from controller.timeutil import iso

TIMING = ("when", "start_after", "expires", "max_run_count", "enabled")


def window(cfg: dict[str, Any], state: dict[str, Any]) -> Window:
    return Window(anchor=float(state.get("anchor") or 0.0),
                  start_after=parse_time(cfg["start_after"], "start_after") if cfg.get("start_after") else 0.0,
                  expires=parse_time(cfg["expires"], "expires") if cfg.get("expires") else 0.0)


def next_for(cfg: dict[str, Any], state: dict[str, Any], after: float) -> float | None:
    """The schedule's next run after ``after``; None when it is disabled or has no more."""
    if not cfg.get("enabled", True):
        return None
    mrc = cfg.get("max_run_count")
    if mrc is not None and int(state.get("total_run_count") or 0) >= mrc:
        return None
    return next_occurrence(compile_when(cfg["when"]), after, window(cfg, state))


def new_state(now: float) -> dict[str, Any]:
    return {"anchor": now, "next_run": None, "last_run": None, "total_run_count": 0, "seq": 0,
            "running": None, "reminded_for": None, "immediate": False}


def _stamp(ts: Any) -> str | None:
    return iso(float(ts)) if ts is not None else None


def view(cfg: dict[str, Any], state: dict[str, Any] | None) -> dict[str, Any]:
    """What the API shows: the schedule as written (``when`` with max_run_count in it, as the
    spec has it) and where it stands: next_run, last_run, total_run_count, status
    (scheduled, running, disabled, error or finished, with finished_reason), and the last
    failure to handle it (last_error, last_error_at, failures, retry_at: "" / None / 0 when
    the last attempt worked)."""
    st = state or new_state(0.0)
    out = {"id": cfg["id"], "name": cfg["name"], **public(cfg)}
    out.pop("org", None)
    when = dict(cfg["when"])
    if cfg.get("max_run_count") is not None:
        when["max_run_count"] = cfg["max_run_count"]
    out["when"] = when
    out.update(next_run=_stamp(st.get("next_run")), last_run=_stamp(st.get("last_run")),
               total_run_count=int(st.get("total_run_count") or 0))
    failures = int(st.get("failures") or 0)
    out.update(failures=failures, last_error=str(st.get("last_error") or ""),
               last_error_at=_stamp(st.get("last_error_at")), retry_at=_stamp(st.get("retry_at")))
    reason = ""
    if not cfg.get("enabled", True):
        status = "disabled"
    elif st.get("running") is not None:
        status = "running"
    elif failures:
        status = "error"  # the scheduler could not handle it: tried again at retry_at
    elif st.get("next_run") is None:
        status = "finished"
        mrc = cfg.get("max_run_count")
        if mrc is not None and out["total_run_count"] >= mrc:
            reason = "max_run_count"
        elif cfg["when"]["schedule_type"] == "one_off" and st.get("last_run") is not None:
            reason = "done"
        elif cfg.get("expires"):
            reason = "expired"  # its next time would be after expires
        else:
            reason = "no more runs"
    else:
        status = "scheduled"
    out.update(status=status, finished_reason=reason)
    return out


class _OrgLookups:
    """spec.Lookups for one organisation."""

    def __init__(self, svc: ScheduleService, p: Principal) -> None:
        self.svc, self.p = svc, p

    def script(self, ref: str) -> dict[str, Any] | None:
        try:
            return self.svc.scripts.get(self.p, ref)
        except NotFound:
            return None

    def machine_exists(self, machine_id: str) -> bool:
        return "/" not in machine_id and self.svc.store.get(
            f"machine/{self.p.org_id}/{machine_id}") is not None

    def member_email(self, ref: str) -> str | None:
        return self.svc.member_email(self.p.org_id, ref)


class ScheduleService:
    def __init__(self, settings: Settings, store: Store, writer: Writer,
                 accounts: AccountService, scripts: ScriptService,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.accounts = accounts
        self.scripts = scripts
        self.clock = clock
        # told of every change to a schedule's timing (the scheduler recomputes its wake-up)
        self.on_change: Callable[[str, str], None] = lambda org, sid: None

    # ---- reading ------------------------------------------------------------------------
    def member_email(self, org: str, ref: str) -> str | None:
        """The e-mail of the member ``ref`` (user id or e-mail) of ``org``, else None."""
        user = (self.accounts.user_by_email(ref) if "@" in ref
                else self.accounts.get_user(ref) if ref and "/" not in ref else None)
        if user is None or user.get("disabled") or self.accounts.membership(org, user["id"]) is None:
            return None
        return str(user.get("email") or "") or None

    def load(self, p: Principal, ref: str) -> tuple[dict[str, Any], bytes]:
        """Schedule ``ref`` (id, or name as Mist allows) of the caller's organisation, with
        its stored bytes; NotFound otherwise (other organisations' too)."""
        found = by_ref(self.store, SCHEDULE, f"schedule/{p.org_id}/", ref) if p.org_id else None
        if found is None:
            raise NotFound("no such schedule", {"id": ref})
        return found

    def state(self, org: str, sid: str) -> tuple[dict[str, Any], bytes | None]:
        raw = self.store.get(state_key(org, sid))
        return (load(SCHEDSTATE, raw) if raw is not None else new_state(0.0)), raw

    def get(self, p: Principal, ref: str) -> dict[str, Any]:
        cfg, _ = self.load(p, ref)
        return view(cfg, self.state(p.org_id, cfg["id"])[0])

    def list_schedules(self, p: Principal, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        cfgs = [load(SCHEDULE, raw) for _, raw in self.store.scan(f"schedule/{p.org_id}/")]
        states = self.store.get_many([state_key(p.org_id, c["id"]) for c in cfgs])
        return apply((view(c, load(SCHEDSTATE, s) if s is not None else None)
                      for c, s in zip(cfgs, states, strict=True)), query)

    def runs(self, p: Principal, ref: str, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The runs kept for a schedule, newest first."""
        cfg, _ = self.load(p, ref)
        docs = (public(load(SCHEDRUN, raw)) for _, raw in
                self.store.scan(runs_prefix(p.org_id, cfg["id"]), reverse=True))
        return apply(docs, query)

    # ---- changes ------------------------------------------------------------------------
    def add(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        """Add a schedule owned by the caller (its runs act as them). Raises BadRequest
        naming the field, Conflict for a name in use."""
        if not p.org_id:
            raise Invalid("you belong to no organisation", field="org")
        now = self.clock()
        cfg = spec.check(body, None, _OrgLookups(self, p), now, self.settings.schedule_min_interval)
        sid = uuid.uuid4().hex
        cfg["name"] = cfg["name"] or f"schedule-{sid[:8]}"
        self._unique(p.org_id, cfg["name"], sid)
        email = str(p.user.get("email", ""))
        cfg.update(id=sid, created=iso(now), created_by=email, owned_by=email, _owner=p.user_id,
                   expiration_for="")
        state = new_state(now)
        self.plan(cfg, state, now, immediate=cfg["run_immediately"])
        if state["next_run"] is None:
            raise BadRequest("this schedule would never run: its next time is after expires "
                             "(or max_run_count allows none)", field="expires")
        change = Change("schedule.add", org=p.org_id, target_kind="schedule", target_id=sid,
                        details=_describe(cfg))
        self.put(change, p.org_id, cfg, state, None)
        change.event("created", "schedule", sid, {"name": cfg["name"]})
        self.writer.commit(actor, change)
        self.on_change(p.org_id, sid)
        return view(cfg, state)

    def edit(self, p: Principal, actor: Actor, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """Change any of the fields (the others stay). A change of timing recomputes the next
        run from now (runs missed while disabled are not made up); run_immediately only acts
        when a schedule is added (a schedule read back and sent again must not run). An edit
        that changes what runs (actions) or on which machines (selectors) makes the editor
        the owner: runs act with the rights of whoever last decided what they do, never of
        someone else, and the audit entry says from whom to whom. An edit clears the last
        error (the scheduler tries again). Raises BadRequest, NotFound, Conflict."""
        cfg, raw = self.load(p, ref)
        if cfg.get("expiration_for"):
            raise Conflict("this schedule is a machine's expiration: change it with PUT "
                           f"/api/v2/machines/{cfg['expiration_for']} {{\"expiration\": ...}} "
                           "(or delete it)", {"machine": cfg["expiration_for"]})
        now = self.clock()
        checked = spec.check(body, cfg, _OrgLookups(self, p), now,
                             self.settings.schedule_min_interval)
        new = dict(cfg, **checked)
        if new["name"] != cfg["name"]:
            if not new["name"]:
                raise BadRequest("name must not be empty", field="name")
            self._unique(p.org_id, new["name"], cfg["id"])
        state, _ = self.state(p.org_id, cfg["id"])
        changed = {k: {"from": cfg.get(k), "to": new.get(k)} if k in ("name", "enabled", "missed",
                   "expires", "start_after", "max_run_count") else True
                   for k in spec.EDITABLE if k in body and cfg.get(k) != new.get(k)}
        if not changed:
            return view(cfg, state)
        email = str(p.user.get("email", ""))
        if ("actions" in changed or "selectors" in changed) and cfg.get("_owner") != p.user_id:
            new.update(_owner=p.user_id, owned_by=email)
            changed["owned_by"] = {"from": cfg.get("owned_by", ""), "to": email}
        if state.get("failures"):
            state.update(failures=0, last_error="", last_error_at=None, retry_at=None)
        if any(k in changed for k in ("when", "start_after")):
            state["anchor"] = now
        if any(k in changed for k in TIMING):
            self.plan(new, state, now)
        change = Change("schedule.edit", org=p.org_id, target_kind="schedule",
                        target_id=cfg["id"], details={"name": new["name"], "changes": changed})
        self.put(change, p.org_id, new, state, raw)
        change.event("changed", "schedule", cfg["id"], {"name": new["name"]})
        self.writer.commit(actor, change)
        self.on_change(p.org_id, cfg["id"])
        return view(new, state)

    def toggle(self, p: Principal, actor: Actor, ref: str, enabled: bool) -> dict[str, Any]:
        return self.edit(p, actor, ref, {"enabled": enabled})

    def delete(self, p: Principal, actor: Actor, ref: str) -> None:
        """Delete a schedule, its state and its runs (a run in progress finishes, recorded in
        the audit log only). A machine's expiration schedule also clears the machine's
        expiration."""
        cfg, raw = self.load(p, ref)
        org, sid = p.org_id, cfg["id"]
        change = Change("schedule.delete", org=org, target_kind="schedule", target_id=sid,
                        details={"name": cfg["name"]})
        change.delete(schedule_key(org, sid)).expect(schedule_key(org, sid), raw)
        change.delete(state_key(org, sid))
        for k, _ in self.store.scan(runs_prefix(org, sid), keys_only=True):
            change.delete(k)
        if cfg.get("expiration_for"):
            from controller.schedules.expiration import set_machine_field

            set_machine_field(self.store, change, org, cfg["expiration_for"], "")
            change.details["machine"] = cfg["expiration_for"]
        change.event("deleted", "schedule", sid, {"name": cfg["name"]})
        self.writer.commit(actor, change)
        self.on_change(org, sid)

    # ---- shared with the scheduler and expirations ---------------------------------------
    def plan(self, cfg: dict[str, Any], state: dict[str, Any], now: float,
             immediate: bool = False) -> None:
        """Set the state's next run from ``now`` (now itself when ``immediate``)."""
        state["immediate"] = immediate and cfg.get("enabled", True)
        state["next_run"] = now if state["immediate"] else next_for(cfg, state, now)
        state["reminded_for"] = None

    @staticmethod
    def put(change: Change, org: str, cfg: dict[str, Any], state: dict[str, Any],
            raw: bytes | None) -> None:
        k = schedule_key(org, cfg["id"])
        change.put(k, dump(SCHEDULE, dict(cfg, org=org))).expect(k, raw)
        change.put(state_key(org, cfg["id"]), dump(SCHEDSTATE, state))

    def _unique(self, org: str, name: str, except_id: str) -> None:
        for _, v in self.store.scan(f"schedule/{org}/"):
            d = json.loads(v)
            if d.get("name") == name and d["id"] != except_id:
                raise Conflict(f"a schedule named {name!r} exists already", {"field": "name"})


def _describe(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the audit log keeps of a schedule."""
    return {"name": cfg["name"], "when": cfg["when"], "enabled": cfg["enabled"],
            "actions": [a["action_type"] for a in cfg["actions"]],
            "selectors": cfg["selectors"][:10], "max_run_count": cfg.get("max_run_count"),
            "expires": cfg.get("expires", ""), "start_after": cfg.get("start_after", ""),
            "missed": cfg["missed"]}
