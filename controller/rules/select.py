"""Which machines a rule watches, resolved at every evaluation (a machine tagged later is
included at the next one): the organisation's machines, read from the store each round but
decoded only when their stored bytes changed, then narrowed by the rule's selectors (all of
them must match: ids, tags, a field, an age).

The evaluator keeps this for every machine of every organisation with a rule (each has the
'no data' one once it has agents), so it keeps little: a fingerprint of each machine's stored
bytes, not the bytes, and of each document its tags and its plain top-level fields (what
selectors, names and states read), not its facts, costs or key associations. With 10,000
agents that is ~1.5 KiB instead of ~6.5 KiB per machine (bench/agents_scale_bench.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from controller import safe_regex
from controller.machines.model import MACHINE
from controller.store.base import Store
from controller.timeutil import parse_iso


@dataclass
class OrgMachines:
    org: str
    raw: dict[str, int] = field(default_factory=dict)        # machine id -> hash of its bytes
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_agent: dict[str, str] = field(default_factory=dict)   # agent id -> machine id
    monitored: frozenset[str] = frozenset()                   # machines with an agent
    version: int = 0                                          # bumped when anything changed
    read_at: float = 0.0

    def refresh(self, store: Store, now: float, every: float = 1.0) -> None:
        if now - self.read_at < every:
            return
        self.read_at = now
        seen: dict[str, int] = {}
        changed = False
        old = self.raw
        for key, raw in store.scan(f"machine/{self.org}/"):
            mid = key.rsplit("/", 1)[1]
            # keyed per process (SipHash with a random key): stored bytes cannot be
            # crafted to collide with the previous ones
            seen[mid] = fp = hash(raw)
            if old.get(mid) != fp:
                doc, _ = MACHINE.upgrade(json.loads(raw))
                self.docs[mid] = slim(doc)
                changed = True
        if changed or len(seen) != len(old):
            for mid in set(self.docs) - set(seen):
                del self.docs[mid]
            self.raw = seen
            live = {mid: d for mid, d in self.docs.items() if not d.get("missing_since")}
            by_agent: dict[str, str] = {}
            for mid, d in live.items():
                agent = str(d.get("agent") or "")
                if agent and (agent not in by_agent or mid != agent):
                    by_agent[agent] = mid  # a cloud machine linked to the agent wins
            self.by_agent = by_agent
            self.monitored = frozenset(by_agent.values())
            self.version += 1

    def name(self, mid: str) -> str:
        d = self.docs.get(mid)
        return str(d.get("name") or mid) if d else mid


def slim(doc: dict[str, Any]) -> dict[str, Any]:
    """What rules read of a machine: its tags and its top-level fields that are not
    containers (lists of plain values, such as addresses, too)."""
    return {k: v for k, v in doc.items()
            if k == "tags" or not isinstance(v, (dict, list))
            or (isinstance(v, list) and all(isinstance(x, (str, int, float, bool)) for x in v))}


def _tag_ok(tags: dict[str, Any], term: str) -> bool:
    k, eq, v = term.partition("=")
    if k not in tags:
        return False
    return not eq or str(tags[k]) == v


def select(machines: OrgMachines, selectors: list[dict[str, Any]], base: frozenset[str] | set[str],
           now: float) -> set[str]:
    """The ids among ``base`` that every selector matches."""
    out = set(base)
    for s in selectors:
        kind = s["type"]
        if kind == "machines":
            out &= set(s["ids"])
            continue
        keep = set()
        for mid in out:
            d = machines.docs.get(mid)
            if d is None:
                continue
            if kind == "tags":
                tags = d.get("tags") or {}
                ok = all(_tag_ok(tags, t) for t in s["include"])
            elif kind == "age":
                try:
                    ok = now - parse_iso(str(d.get("created") or "")) >= s["minutes"] * 60
                except ValueError:
                    ok = False
            else:
                v = d.get(s["field"])
                if s["operator"] == "regex":  # linear time (RE2): this runs every second
                    rx = safe_regex.stored(str(s["value"]))
                    ok = rx is not None and rx.search(str(v))
                else:
                    ok = v == s["value"] or str(v) == str(s["value"])
            if ok:
                keep.add(mid)
        out = keep
    return out
