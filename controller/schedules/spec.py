"""A schedule as users write it (Mist v2's AddScheduleRequest / EditScheduleRequest) checked
and normalised into what is stored: every mistake is a 400 naming the field (``when.minute``,
``actions[0].script``, ``selectors[1].ids[2]``) and, for cron text, the position."""

from __future__ import annotations

import re
from typing import Any, Protocol

from controller import safe_regex
from controller.clouds.model import check_tags
from controller.errors import BadRequest, Invalid
from controller.schedules.model import (
    MACHINE_ACTIONS,
    MAX_ACTIONS,
    MAX_IDS,
    MAX_SELECTORS,
    MISSED,
)
from controller.schedules.when import PERIODS, parse_time, parse_when, zone
from controller.timeutil import iso

MAX_COMMAND = 64 * 1024
MAX_TEXT = 10_000
_EMAIL = re.compile(r"^[^@\s<>,;\"']{1,64}@[^@\s<>,;\"']{1,253}$")
EDITABLE = ("name", "description", "tags", "enabled", "selectors", "actions", "when",
            "expires", "start_after", "max_run_count", "run_immediately", "missed", "reminder")


class Lookups(Protocol):
    """What checking a schedule reads, all within the caller's organisation."""

    def script(self, ref: str) -> dict[str, Any] | None: ...

    def machine_exists(self, machine_id: str) -> bool: ...

    def member_email(self, ref: str) -> str | None: ...


def _text(body: dict[str, Any], name: str, limit: int, field: str = "") -> str:
    v = body.get(name)
    if v is None:
        return ""
    if not isinstance(v, str) or len(v) > limit:
        raise BadRequest(f"{field or name} must be text of at most {limit} characters",
                         field=field or name)
    return v.strip()


def _list(value: Any, field: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{field} must be a list", field=field)
    if len(value) > limit:
        raise BadRequest(f"{field} may have at most {limit} items", field=field)
    return value


def check_selectors(raw: Any, look: Lookups) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, s in enumerate(_list(raw if raw is not None else [], "selectors", MAX_SELECTORS)):
        f = f"selectors[{i}]"
        if not isinstance(s, dict):
            raise BadRequest(f"{f} must be an object with a type", field=f)
        kind = s.get("type")
        if kind == "machines":
            ids = _list(s.get("ids"), f"{f}.ids", MAX_IDS)
            for j, mid in enumerate(ids):
                if not isinstance(mid, str) or not look.machine_exists(mid):
                    raise BadRequest(f"{f}.ids[{j}]: no machine {str(mid)[:100]!r} in this "
                                     "organisation", field=f"{f}.ids[{j}]")
            out.append({"type": "machines", "ids": list(dict.fromkeys(ids))})
        elif kind in ("volumes", "clusters", "networks"):
            raise BadRequest(f"{f}.type: schedules act on machines; {kind} cannot be selected",
                             field=f"{f}.type")
        elif kind == "tags":
            out.append({"type": "tags", "include": _tags(s.get("include"), f"{f}.include")})
        elif kind == "age":
            minutes = s.get("minutes")
            if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
                raise BadRequest(f"{f}.minutes must be a whole number of minutes, at least 1",
                                 field=f"{f}.minutes")
            out.append({"type": "age", "minutes": minutes})
        elif kind == "field":
            out.append(_field_selector(s, f))
        else:
            raise BadRequest(f"{f}.type must be one of: machines, tags, age, field",
                             field=f"{f}.type")
    return out


def _tags(raw: Any, field: str) -> list[str]:
    """Mist's include list ("env", "env=prod") or an object of key -> value (null: any)."""
    if isinstance(raw, dict):
        raw = [k if v in (None, "") else f"{k}={v}" for k, v in raw.items()]
    items = _list(raw, field, 100)
    if not items:
        raise BadRequest(f"{field} must name at least one tag", field=field)
    out = []
    for j, t in enumerate(items):
        if not isinstance(t, str) or not t.strip():
            raise BadRequest(f"{field}[{j}] must be a tag: key or key=value", field=f"{field}[{j}]")
        k, eq, v = t.strip().partition("=")
        try:
            check_tags({k.strip(): v}, f"{field}[{j}]")
        except Invalid as exc:
            raise BadRequest(exc.message, field=f"{field}[{j}]") from None
        out.append(f"{k.strip()}={v.strip()}" if eq else k.strip())
    return out


def _field_selector(s: dict[str, Any], f: str) -> dict[str, Any]:
    name = s.get("field")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.]{1,100}", name):
        raise BadRequest(f"{f}.field must name a machine field such as state or os_type",
                         field=f"{f}.field")
    op = s.get("operator", "eq")
    if op not in ("eq", "regex"):
        raise BadRequest(f"{f}.operator must be eq or regex", field=f"{f}.operator")
    value = s.get("value")
    if not isinstance(value, str | int | float | bool) or len(str(value)) > 1000:
        raise BadRequest(f"{f}.value must be text or a number", field=f"{f}.value")
    if op == "regex":  # RE2 (linear time); BadRequest naming the field if it does not take it
        safe_regex.compile(str(value), f"{f}.value")
    return {"type": "field", "field": name, "operator": op, "value": value}


def check_actions(raw: Any, look: Lookups) -> list[dict[str, Any]]:
    items = _list(raw, "actions", MAX_ACTIONS)
    if not items:
        raise BadRequest("actions must have at least one action", field="actions")
    return [_action(a, f"actions[{i}]", look) for i, a in enumerate(items)]


def _action(a: Any, f: str, look: Lookups) -> dict[str, Any]:
    if not isinstance(a, dict):
        raise BadRequest(f"{f} must be an object with action_type", field=f)
    kind = a.get("action_type")
    if kind in MACHINE_ACTIONS:
        if kind != "resize":
            return {"action_type": kind}
        size = _text(a, "params", 200, f"{f}.params")
        if not size:
            raise BadRequest(f"{f}.params: resize needs the size (id or the provider's)",
                             field=f"{f}.params")
        return {"action_type": kind, "params": size}
    if kind in ("delete", "undefine"):
        raise BadRequest(f"{f}.action_type: {kind} is not a machine action here (destroy is)",
                         field=f"{f}.action_type")
    if kind == "run_script":
        return _script(a, f, look)
    if kind == "notify":
        return _notify(a, f, look)
    if kind == "webhook":
        raise BadRequest(f"{f}.action_type: schedules do not call webhooks (their headers "
                         "would be kept in the clear); use notify", field=f"{f}.action_type")
    raise BadRequest(f"{f}.action_type must be one of: {', '.join(MACHINE_ACTIONS)}, "
                     "run_script, notify", field=f"{f}.action_type")


def _script(a: dict[str, Any], f: str, look: Lookups) -> dict[str, Any]:
    stype = a.get("script_type") or ("inline" if "command" in a else "existing")
    out: dict[str, Any] = {"action_type": "run_script", "script_type": stype}
    if stype == "existing":
        ref = _text(a, "script", 200, f"{f}.script")
        found = look.script(ref) if ref else None
        if found is None:
            raise BadRequest(f"{f}.script: no script {ref!r} in this organisation" if ref else
                             f"{f}.script is required: the id or name of a script",
                             field=f"{f}.script")
        out.update(script=found["id"], script_name=found["name"])
    elif stype == "inline":
        cmd = a.get("command")
        if not isinstance(cmd, str) or not cmd.strip() or len(cmd) > MAX_COMMAND:
            raise BadRequest(f"{f}.command must be a shell command of 1 to {MAX_COMMAND} "
                             "characters", field=f"{f}.command")
        out["command"] = cmd
    else:
        raise BadRequest(f"{f}.script_type must be existing or inline", field=f"{f}.script_type")
    params = a.get("params")
    if params is not None and not (isinstance(params, str) and len(params) <= 10_000):
        raise BadRequest(f"{f}.params must be text (the arguments)", field=f"{f}.params")
    out["params"] = params or ""
    if "timeout" in a:
        t = a["timeout"]
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 86_400:
            raise BadRequest(f"{f}.timeout must be 1 to 86400 seconds", field=f"{f}.timeout")
        out["timeout"] = t
    if "su" in a:
        if not isinstance(a["su"], bool):
            raise BadRequest(f"{f}.su must be true or false", field=f"{f}.su")
        out["su"] = a["su"]
    return out


def _notify(a: dict[str, Any], f: str, look: Lookups) -> dict[str, Any]:
    if a.get("teams"):
        raise BadRequest(f"{f}.teams: Overcast has no teams; name users or emails",
                         field=f"{f}.teams")
    users = []
    for j, u in enumerate(_list(a.get("users") or [], f"{f}.users", 100)):
        email = look.member_email(u) if isinstance(u, str) else None
        if email is None:
            raise BadRequest(f"{f}.users[{j}]: no member {str(u)[:100]!r} in this organisation",
                             field=f"{f}.users[{j}]")
        users.append(u)
    emails = []
    for j, e in enumerate(_list(a.get("emails") or [], f"{f}.emails", 100)):
        if not isinstance(e, str) or not _EMAIL.match(e.strip()):
            raise BadRequest(f"{f}.emails[{j}] is not an e-mail address", field=f"{f}.emails[{j}]")
        emails.append(e.strip())
    if not users and not emails:
        raise BadRequest(f"{f}: notify needs users or emails to notify", field=f"{f}.emails")
    return {"action_type": "notify", "users": users, "emails": emails, "teams": [],
            "subject": _text(a, "subject", 500, f"{f}.subject"),
            "message": _text(a, "message", MAX_TEXT, f"{f}.message")}


def _reminder(raw: Any) -> dict[str, Any] | None:
    if raw in (None, {}):
        return None
    if not isinstance(raw, dict):
        raise BadRequest("reminder must be an object: {message, when: {unit, value}}",
                         field="reminder")
    when = raw.get("when") or {}
    unit, value = when.get("unit", "minutes"), when.get("value")
    if unit not in PERIODS:
        raise BadRequest(f"reminder.when.unit must be one of: {', '.join(PERIODS)}",
                         field="reminder.when.unit")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value * PERIODS[unit] <= 366 * 86400:
        raise BadRequest("reminder.when.value must be a whole number, at least 1 (and at most a year)",
                         field="reminder.when.value")
    return {"message": _text(raw, "message", MAX_TEXT, "reminder.message"),
            "when": {"unit": unit, "value": value}}


def reminder_seconds(reminder: dict[str, Any] | None) -> int:
    if not reminder:
        return 0
    return int(reminder["when"]["value"] * PERIODS[reminder["when"]["unit"]])


def check(body: dict[str, Any], old: dict[str, Any] | None, look: Lookups, now: float,
          min_interval: int) -> dict[str, Any]:
    """The schedule's stored fields from ``body`` (all of them for an add, ``old`` with the
    body's fields over it for an edit); BadRequest naming what is wrong."""
    for k in body:
        if k not in EDITABLE:
            raise BadRequest(f"unknown field {k!r}", field=k)
    merged = dict(old or {})
    out: dict[str, Any] = {}
    out["name"] = _text(body, "name", 200) if "name" in body else merged.get("name", "")
    out["description"] = (_text(body, "description", 2000) if "description" in body
                          else merged.get("description", ""))
    try:
        out["tags"] = check_tags(body["tags"]) if "tags" in body else merged.get("tags", {})
    except Invalid as exc:
        raise BadRequest(exc.message, field="tags") from None
    for flag, default in (("enabled", True), ("run_immediately", False)):
        v = body.get(flag, merged.get(flag, default))
        if not isinstance(v, bool):
            raise BadRequest(f"{flag} must be true or false", field=flag)
        out[flag] = v
    out["missed"] = body.get("missed", merged.get("missed", "run_once"))
    if out["missed"] not in MISSED:
        raise BadRequest("missed must be run_once or skip", field="missed")
    if "when" not in body and old is None:
        raise BadRequest("when is required: {schedule_type: interval|crontab|one_off, ...}",
                         field="when")
    raw_when = body.get("when", merged.get("when"))
    out["when"] = (parse_when(raw_when, now, min_interval) if "when" in body
                   else merged["when"])
    # in the body, or in when (where the spec has it); not given: it stays
    if "max_run_count" in body:
        mrc = body["max_run_count"]
    elif isinstance(raw_when, dict) and "max_run_count" in raw_when and "when" in body:
        mrc = raw_when["max_run_count"]
    else:
        mrc = merged.get("max_run_count")
    if "max_run_count" in body and isinstance(raw_when, dict) and "max_run_count" in raw_when \
            and raw_when["max_run_count"] != body["max_run_count"]:
        raise BadRequest("max_run_count is given twice with different values",
                         field="max_run_count")
    if mrc is not None and (isinstance(mrc, bool) or not isinstance(mrc, int) or mrc < 1):
        raise BadRequest("max_run_count must be a whole number, at least 1 (or null: no limit)",
                         field="max_run_count")
    out["max_run_count"] = mrc
    tz = zone(out["when"].get("timezone"), "when.timezone")
    for name in ("start_after", "expires"):
        v = body.get(name, merged.get(name, ""))
        out[name] = iso(parse_time(v, name, tz)) if v not in (None, "") else ""
    if "expires" in body and out["expires"] and parse_time(out["expires"], "expires") <= now:
        raise BadRequest(f"expires {body['expires']} is in the past", field="expires")
    if out["start_after"] and out["expires"] and out["start_after"] >= out["expires"]:
        raise BadRequest("start_after must be before expires", field="start_after")
    out["selectors"] = (check_selectors(body.get("selectors"), look) if "selectors" in body
                        else merged.get("selectors", []))
    out["actions"] = (check_actions(body.get("actions"), look) if "actions" in body or old is None
                      else merged["actions"])
    if not out["selectors"] and any(a["action_type"] != "notify"
                                    for a in out["actions"]):
        raise BadRequest("selectors: choose the machines to act on (ids, tags or age)",
                         field="selectors")
    out["reminder"] = _reminder(body["reminder"]) if "reminder" in body else merged.get("reminder")
    return out
