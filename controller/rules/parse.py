"""Rule bodies as the Mist v2 spec shapes them (``AddRuleRequest``, ``EditRuleRequest``),
checked and normalised into the stored form. A value of the wrong JSON type is a
:class:`BadRequest` (400); a value of the right type that is not acceptable (an unknown
metric, a machine that is not the organisation's, a local webhook) is :class:`Invalid` (422)
or :class:`Forbidden`, naming the field. Mist v1's ``queries``/``window``/``frequency`` are
accepted too and read as one condition and ``when``."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from controller.errors import BadRequest, Invalid
from controller.notify.model import (
    MAX_HEADERS,
    MAX_URL,
    is_email,
    is_redacted,
    redact_url,
    secret_header,
    shown_url,
)
from controller.rules import model as m
from controller.rules.target import parse_logs, parse_metric


@dataclass
class Context:
    """What checking a rule needs from the rest of the controller (the service fills it)."""

    metrics: Callable[[], set[str]]                  # metric names the organisation has
    missing_machines: Callable[[list[str]], list[str]]
    script: Callable[[str], dict[str, Any]]          # id or name -> the script (or NotFound)
    member: Callable[[str], str]                     # user id or e-mail -> user id (or Invalid)
    check_url: Callable[[str], None]                 # raises Forbidden for refused targets
    seal: Callable[[str], str]
    open: Callable[[str], str]
    default_frequency: int = m.DEFAULT_FREQUENCY


def _type(value: Any, kind: type | tuple[type, ...], field: str, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,))):
        raise BadRequest(f"{field} must be {what}", field=field)
    return value


def _int(value: Any, field: str, low: int = 0, high: int | None = None) -> int:
    _type(value, int, field, "a whole number")
    if value < low or (high is not None and value > high):
        raise Invalid(f"{field} must be {low} to {high}" if high is not None
                      else f"{field} must be at least {low}", field=field)
    return int(value)


def _period(value: Any, field: str) -> str:
    _type(value, str, field, "a string")
    p = value.strip().lower()
    p = p if p.endswith("s") else p + "s"
    if p not in m.PERIODS:
        raise Invalid(f"{field} must be one of: {', '.join(m.PERIODS)}", field=field)
    return p


def seconds(spec: dict[str, Any], amount: str = "offset") -> int:
    return int(spec.get(amount, 0)) * m.PERIODS[spec.get("period", "seconds")]


def _text(value: Any, field: str, high: int, low: int = 0) -> str:
    _type(value, str, field, "a string")
    v = value.strip()
    if not low <= len(v) <= high:
        raise Invalid(f"{field} must have {low} to {high} characters", field=field)
    return v


def _list(value: Any, field: str, high: int) -> list[Any]:
    _type(value, list, field, "a list")
    if len(value) > high:
        raise Invalid(f"{field} may have at most {high} items", field=field)
    return value


# ---- conditions ----------------------------------------------------------------------------
def window(value: Any, field: str) -> dict[str, Any]:
    _type(value, dict, field, "an object: {start, stop, period}")
    period = _period(value.get("period", "minutes"), f"{field}.period")
    start = _int(value.get("start"), f"{field}.start", 1)
    stop = _int(value.get("stop", 0), f"{field}.stop", 0)
    if stop >= start:
        raise Invalid(f"{field}.stop must be less than start (the window is now - start to "
                      "now - stop)", field=f"{field}.stop")
    if start * m.PERIODS[period] > m.MAX_WINDOW:
        raise Invalid(f"{field} reaches back more than {m.MAX_WINDOW // 86400} days",
                      field=f"{field}.start")
    return {"start": start, "stop": stop, "period": period}


def condition(value: Any, field: str, ctx: Context) -> dict[str, Any]:
    _type(value, dict, field, "an object: {data_type, query, window}")
    data_type = value.get("data_type", "metrics")
    if data_type not in m.DATA_TYPES:
        raise Invalid(f"{field}.data_type must be one of: {', '.join(m.DATA_TYPES)}",
                      field=f"{field}.data_type")
    win = window(value.get("window", {"start": 5, "period": "minutes"}), f"{field}.window")
    if data_type == "nodata":
        return {"data_type": "nodata", "window": win, "query": {"target": m.HEARTBEAT_METRIC}}
    qf = f"{field}.query"
    q = _type(value.get("query"), dict, qf, "an object: {target, operator, threshold, aggregation}")
    for name in ("target", "operator", "threshold"):
        if name not in q:
            raise Invalid(f"{qf}.{name} is required", field=f"{qf}.{name}")
    target = _text(q["target"], f"{qf}.target", 2000, 1)
    op = _type(q["operator"], str, f"{qf}.operator", "a string").strip().lower()
    op = m.OPERATOR_SYMBOLS.get(op, op)
    if op not in m.OPERATORS:
        raise Invalid(f"{qf}.operator must be one of: {', '.join(m.OPERATORS)}",
                      field=f"{qf}.operator")
    threshold = q["threshold"]
    if not isinstance(threshold, int | float) or isinstance(threshold, bool):
        raise BadRequest(f"{qf}.threshold must be a number, not {type(threshold).__name__} "
                         f"{json.dumps(threshold)[:40]}", field=f"{qf}.threshold")
    agg = _type(q.get("aggregation", "count" if data_type == "logs" else "avg"), str,
                f"{qf}.aggregation", "a string").strip().lower()
    allowed = ("count",) if data_type == "logs" else m.AGGREGATIONS
    if agg not in allowed:
        raise Invalid(f"{qf}.aggregation must be one of: {', '.join(allowed)}"
                      + (" (log conditions count entries)" if data_type == "logs" else ""),
                      field=f"{qf}.aggregation")
    if data_type == "logs":
        parse_logs(target, f"{qf}.target")
    else:
        sel = parse_metric(target, f"{qf}.target")
        known = ctx.metrics() | m.AGENT_METRICS
        if sel.metric not in known:
            near = difflib.get_close_matches(sel.metric, sorted(known), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise Invalid(f"unknown metric {sel.metric!r}: no machine of this organisation "
                          f"reports it and agents do not send it{hint}", field=f"{qf}.target",
                          metric=sel.metric)
    return {"data_type": data_type, "window": win,
            "query": {"target": target, "operator": op, "threshold": threshold, "aggregation": agg}}


# ---- selectors ---------------------------------------------------------------------------
def selector(value: Any, field: str, ctx: Context) -> dict[str, Any]:
    _type(value, dict, field, "an object")
    kind = value.get("type")
    if kind not in m.SELECTOR_TYPES:
        raise Invalid(f"{field}.type must be one of: {', '.join(m.SELECTOR_TYPES)} (rules watch "
                      "machines)", field=f"{field}.type")
    if kind == "machines":
        ids = [_text(i, f"{field}.ids[{n}]", 200, 1)
               for n, i in enumerate(_list(value.get("ids", []), f"{field}.ids", m.MAX_IDS))]
        missing = ctx.missing_machines(ids)
        if missing:
            raise Invalid(f"no such machine in this organisation: {', '.join(missing[:5])}",
                          field=f"{field}.ids", machines=missing[:100])
        return {"type": "machines", "ids": list(dict.fromkeys(ids))}
    if kind == "tags":
        tags = []
        for n, t in enumerate(_list(value.get("include", []), f"{field}.include", 100)):
            text = _text(t, f"{field}.include[{n}]", 400, 1)
            k, sep, v = text.partition("=") if "=" in text else text.partition(":")
            tags.append(f"{k.strip()}={v.strip()}" if sep else k.strip())
        if not tags:
            raise Invalid(f"{field}.include needs at least one tag (key or key=value)",
                          field=f"{field}.include")
        return {"type": "tags", "include": tags}
    if kind == "age":
        return {"type": "age", "minutes": _int(value.get("minutes"), f"{field}.minutes", 1)}
    op = value.get("operator", "eq")
    if op not in ("eq", "regex"):
        raise Invalid(f"{field}.operator must be eq or regex", field=f"{field}.operator")
    fv = value.get("value")
    if op == "regex":
        from controller import safe_regex

        safe_regex.compile(_type(fv, str, f"{field}.value", "a string"), f"{field}.value")
    return {"type": "field", "field": _text(value.get("field"), f"{field}.field", 100, 1),
            "operator": op, "value": fv}


# ---- actions -----------------------------------------------------------------------------
def action(value: Any, field: str, ctx: Context, old: dict[str, Any] | None,
           hooks: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    _type(value, dict, field, "an object with action_type")
    kind = value.get("action_type")
    if kind not in m.ACTION_TYPES:
        raise Invalid(f"{field}.action_type must be one of: {', '.join(m.ACTION_TYPES)}",
                      field=f"{field}.action_type")
    out: dict[str, Any] = {"action_type": kind,
                           "on_resolve": _type(value.get("on_resolve", False), bool,
                                               f"{field}.on_resolve", "true or false")}
    if kind == "notify":
        if value.get("teams"):
            raise Invalid(f"{field}.teams: teams are not supported; name users or e-mail "
                          "addresses", field=f"{field}.teams")
        emails = [_text(e, f"{field}.emails[{n}]", 254, 3)
                  for n, e in enumerate(_list(value.get("emails", []), f"{field}.emails", 100))]
        bad = [e for e in emails if not is_email(e)]
        if bad:
            raise Invalid(f"{field}.emails: not an e-mail address: {bad[0]!r}", field=f"{field}.emails")
        users = [ctx.member(_text(u, f"{field}.users[{n}]", 254, 1))
                 for n, u in enumerate(_list(value.get("users", []), f"{field}.users", 100))]
        out.update(emails=list(dict.fromkeys(emails)), users=list(dict.fromkeys(users)))
    elif kind == "webhook":
        out.update(_webhook(value, field, ctx, old if old and old.get("action_type") == kind else None,
                            hooks or {}))
    elif kind == "run_script":
        st = value.get("script_type", "existing" if "script" in value else "inline")
        if st == "existing":
            s = ctx.script(_text(value.get("script"), f"{field}.script", 200, 1))
            out.update(script_type="existing", script=s["id"], script_name=s["name"])
        elif st == "inline":
            out.update(script_type="inline", command=_text(value.get("command"),
                                                           f"{field}.command", 65_536, 1))
        else:
            raise Invalid(f"{field}.script_type must be existing or inline", field=f"{field}.script_type")
        out["params"] = _text(value.get("params", ""), f"{field}.params", 10_000)
    elif kind == "resize":
        out["params"] = _text(value.get("params"), f"{field}.params", 200, 1)
    return out


def _webhook(value: dict[str, Any], field: str, ctx: Context, old: dict[str, Any] | None,
             hooks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A webhook action. ``hooks``: the rule's webhooks before this edit, by the URL views
    show: a URL sent back as shown keeps the sealed one it stands for (whatever the action's
    position); headers sent back as ``***`` keep their sealed values."""
    method = _type(value.get("method", "post"), str, f"{field}.method", "a string").upper()
    if method not in ("POST", "PUT", "PATCH", "DELETE"):
        raise Invalid(f"{field}.method must be post, put, patch or delete", field=f"{field}.method")
    url = _text(value.get("url"), f"{field}.url", MAX_URL, 1)
    qs = _text(value.get("query_string_params", ""), f"{field}.query_string_params", 2000)
    kept = hooks.get(url)
    if kept is not None:
        url = ctx.open(kept["_url"])  # the view was sent back: keep what is sealed
        old = kept
    elif is_redacted(url):
        raise Invalid(f"{field}.url is a webhook URL as views show it (scheme://host/… and a "
                      "fingerprint) that this rule does not have: send the full URL",
                      field=f"{field}.url")
    elif not url.startswith(("http://", "https://")) or not _host(url):
        raise Invalid(f"{field}.url must be an http:// or https:// URL with a host",
                      field=f"{field}.url")
    elif qs:
        url += ("&" if "?" in url else "?") + qs.lstrip("?")
    ctx.check_url(url)
    headers = value.get("headers") or {}
    if isinstance(headers, str):
        try:
            headers = json.loads(headers)
        except ValueError:
            raise BadRequest(f"{field}.headers must be an object (or its JSON)", field=f"{field}.headers") from None
    _type(headers, dict, f"{field}.headers", "an object of header names and values")
    if len(headers) > MAX_HEADERS:
        raise Invalid(f"{field}.headers: at most {MAX_HEADERS}", field=f"{field}.headers")
    old_headers = json.loads(ctx.open(old["_headers"])) if old and old.get("_headers") else {}
    plain: dict[str, str] = {}
    for k, v in headers.items():
        _type(v, str, f"{field}.headers.{k}", "a string")
        if any(c in str(k) + v for c in "\r\n") or not str(k).strip():
            raise Invalid(f"{field}.headers: names and values without line breaks", field=f"{field}.headers")
        plain[str(k)] = old_headers.get(k, "") if v == "***" else v
    secret = [_text(s, f"{field}.secret_headers", 200, 1)
              for s in _list(value.get("secret_headers", []), f"{field}.secret_headers", MAX_HEADERS)]
    lower = {s.lower() for s in secret}
    out: dict[str, Any] = {
        "method": method, "url": redact_url(url), "secret_headers": secret,
        "headers": {k: "***" if k.lower() in lower or secret_header(k) else v for k, v in plain.items()},
        "_url": ctx.seal(url), "_headers": ctx.seal(json.dumps(plain))}
    body = value.get("json")
    if isinstance(body, str) and body.strip():
        try:
            body = json.loads(body)
        except ValueError:
            raise BadRequest(f"{field}.json must be JSON", field=f"{field}.json") from None
    if body not in (None, ""):
        out["json"] = _type(body, dict, f"{field}.json", "a JSON object (the incident is added to it)")
    if value.get("data"):
        out["data"] = _text(value["data"], f"{field}.data", 65_536)
    return out


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


# ---- the whole rule ----------------------------------------------------------------------
def interval(value: Any, field: str) -> dict[str, Any]:
    _type(value, dict, field, "an object: {schedule_type: interval, every, period}")
    st = value.get("schedule_type", "interval")
    if st != "interval":
        raise Invalid(f"{field}: a rule is evaluated at an interval (schedule_type interval), "
                      f"not {str(st)[:20]!r}", field=f"{field}.schedule_type")
    every = value.get("every", value.get("value"))
    period = _period(value.get("period", value.get("unit", "minutes")), f"{field}.period")
    n = _int(every, f"{field}.every", 1)
    if n * m.PERIODS[period] > 86400:
        raise Invalid(f"{field}: at least once a day", field=f"{field}.every")
    return {"schedule_type": "interval", "every": n, "period": period}


def offset(value: Any, field: str) -> dict[str, Any]:
    _type(value, dict, field, "an object: {offset, period}")
    return {"offset": _int(value.get("offset", 0), f"{field}.offset", 0, 10**7),
            "period": _period(value.get("period", "seconds"), f"{field}.period")}


def rule_fields(body: dict[str, Any], ctx: Context, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored fields of a rule from ``body`` (over ``old`` for an edit)."""
    base = dict(old or {})
    body = dict(body)
    if "queries" in body:  # Mist v1: one set of queries over one window
        data_type = body.pop("data_type", "metrics")
        win = body.pop("window", {"start": 5, "period": "minutes"})
        body["conditions"] = [{"data_type": data_type, "query": q, "window": win}
                              for q in _list(body.pop("queries"), "queries", m.MAX_CONDITIONS)]
    if "frequency" in body:
        body["when"] = body.pop("frequency")
    out: dict[str, Any] = {}
    if "description" in body or old is None:
        out["description"] = _text(body.get("description", ""), "description", 2000)
    if "conditions" in body or old is None:
        conds = [condition(c, f"conditions[{i}]", ctx)
                 for i, c in enumerate(_list(body.get("conditions"), "conditions", m.MAX_CONDITIONS))]
        if not conds:
            raise Invalid("conditions needs at least one condition", field="conditions")
        if len({c["data_type"] for c in conds}) > 1:
            raise Invalid("a rule's conditions are all on metrics or all on logs",
                          field="conditions")
        if conds[0]["data_type"] == "nodata" and len(conds) > 1:
            raise Invalid("a no-data rule has one condition", field="conditions")
        out["conditions"] = conds
    if "selectors" in body or old is None:
        out["selectors"] = [selector(s, f"selectors[{i}]", ctx) for i, s in
                            enumerate(_list(body.get("selectors") or [], "selectors", m.MAX_SELECTORS))]
    if "actions" in body or old is None:
        before = base.get("actions") or []
        hooks = {shown_url(str(a.get("url", ""))): a for a in before
                 if a.get("action_type") == "webhook" and a.get("_url") and a.get("url")}
        out["actions"] = [action(a, f"actions[{i}]", ctx, before[i] if i < len(before) else None,
                                 hooks)
                          for i, a in enumerate(_list(body.get("actions") or [], "actions", m.MAX_ACTIONS))]
    if "when" in body or old is None:
        out["when"] = (interval(body["when"], "when") if body.get("when") is not None else
                       {"schedule_type": "interval", "every": ctx.default_frequency, "period": "seconds"})
    for name in ("trigger_after", "notify_every"):
        if name in body or old is None:
            out[name] = offset(body.get(name) or {}, name)
    if "enabled" in body:
        out["enabled"] = _type(body["enabled"], bool, "enabled", "true or false")
    return out
