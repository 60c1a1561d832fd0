"""Which machines a schedule acts on, decided at each run from the machines as they are then
(a machine tagged after the schedule was made is included: mist-ce #910). Selectors combine
with AND, as in Mist: ids, tags (every tag given), age (created at least N minutes ago) and
field (equal, or a regular expression: RE2, matched in linear time). Machines gone from
their cloud are left out."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from controller import safe_regex
from controller.machines.model import MACHINE, view
from controller.store.base import Store
from controller.timeutil import parse_iso


def _tag_ok(tags: dict[str, Any], include: list[str]) -> bool:
    for t in include:
        k, eq, v = t.partition("=")
        if k not in tags or (eq and str(tags[k]) != v):
            return False
    return True


def _created(m: dict[str, Any]) -> float | None:
    try:
        return parse_iso(str(m.get("created") or ""))
    except ValueError:
        return None


def _field(m: dict[str, Any], name: str) -> Any:
    cur: Any = m
    for part in name.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def matches(m: dict[str, Any], selectors: list[dict[str, Any]], now: float) -> bool:
    for s in selectors:
        kind = s["type"]
        if kind == "machines" and m["id"] not in s["ids"]:
            return False
        if kind == "tags" and not _tag_ok(m.get("tags") or {}, s["include"]):
            return False
        if kind == "age":
            created = _created(m)
            if created is None or now - created < s["minutes"] * 60:
                return False
        if kind == "field":
            value = _field(m, s["field"])
            if value is None:
                return False
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            want = s["value"]
            want_text = ("true" if want else "false") if isinstance(want, bool) else str(want)
            if s["operator"] == "eq" and text.lower() != want_text.lower():
                return False
            if s["operator"] == "regex":  # linear time (RE2): never a stalled scheduler
                rx = safe_regex.stored(want_text)
                if rx is None or not rx.search(text):
                    return False
    return True


def resolve(store: Store, org: str, selectors: list[dict[str, Any]],
            now: float) -> list[dict[str, Any]]:
    """The machines of ``org`` the selectors choose now (views with ``org`` set), in a stable
    order (by name, then id). No selectors: no machines."""
    if not selectors:
        return []
    ids = [s["ids"] for s in selectors if s["type"] == "machines"]
    raws: Iterable[bytes]
    if ids:  # read only the machines named
        wanted = set(ids[0]).intersection(*ids[1:])
        raws = [r for r in store.get_many([f"machine/{org}/{i}" for i in sorted(wanted)
                                           if "/" not in i]) if r is not None]
    else:
        raws = (raw for _, raw in store.scan(f"machine/{org}/"))
    out = []
    for raw in raws:
        doc, _ = MACHINE.upgrade(json.loads(raw))
        m = dict(view(doc), org=org)
        if m.get("missing_since") or not matches(m, selectors, now):
            continue
        out.append(m)
    out.sort(key=lambda m: (str(m.get("name") or ""), m["id"]))
    return out
