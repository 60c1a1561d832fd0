"""The audit log as rules on logs read it: incrementally, by sequence number, keeping for
each organisation that has log rules the entries of the longest window its rules ask for.
On start (and when an organisation gets its first log rule, or a longer window) that
window is read back from the newest entry, so a restart loses nothing a rule still counts
(and the incidents those entries caused are still open, so nothing fires twice). The
limits on what is kept are per organisation: a noisy one loses its own oldest entries, not
another's. The rules' own entries (``incident.*``, ``notification.*``) are never counted: a
rule cannot feed itself."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from controller.audit.chain import HEAD_KEY, entry_key
from controller.store.base import Store

MAX_ENTRIES = 200_000           # kept in all, whatever the windows...
MAX_PER_ORG = 100_000           # ...and per organisation: when all of them together have too
                                # many, the organisations with the most lose their oldest
                                # first, so a noisy one never pushes out another's entries
_OWN = ("incident.", "notification.")


@dataclass(frozen=True)
class Entry:
    seq: int
    time: float
    org: str
    doc: dict[str, Any]          # what a search sees: action, outcome, type, target, actor, details


def _entry(raw: bytes) -> Entry | None:
    e = json.loads(raw)
    action = str(e.get("action", ""))
    if action.startswith(_OWN) or not e.get("org"):
        return None
    actor = e.get("actor") or {}
    target = e.get("target") or {}
    doc = {"action": action, "outcome": e.get("outcome", ""),
           "type": "request" if actor.get("kind") in ("user", "token") else "event",
           "target": target, "target_kind": target.get("kind", ""), "target_id": target.get("id", ""),
           "actor": actor, "details": e.get("details") or {}, "id": str(e.get("seq", ""))}
    return Entry(int(e.get("seq", 0)), float(e.get("time", 0.0)), str(e["org"]), doc)


class AuditFeed:
    """The entries of the organisations that have log rules, each kept for the longest
    window its rules need (``keep``: organisation -> seconds), per organisation."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cursor: int | None = None
        self._entries: dict[str, deque[Entry]] = {}
        self._keep: dict[str, float] = {}
        self._total = 0

    def _head(self) -> int:
        raw = self.store.get(HEAD_KEY)
        return int(json.loads(raw)["seq"]) if raw else 0

    def _read_back(self, orgs: dict[str, float], now: float) -> int:
        """Read ``orgs``' entries back from the cursor, each as far as its window (and at
        most MAX_PER_ORG of each); returns how many entries were scanned."""
        back: dict[str, list[Entry]] = {o: [] for o in orgs}
        oldest = now - max(orgs.values())
        full = 0
        n = 0
        start = entry_key(self.cursor or 0)
        for _, raw in self.store.scan("audit/", start=start, reverse=True):
            n += 1
            e = _entry(raw)
            if e is None:
                continue
            if e.time < oldest:
                break
            got = back.get(e.org)
            if got is None or len(got) >= MAX_PER_ORG or e.time < now - orgs[e.org]:
                continue
            got.append(e)
            if len(got) == MAX_PER_ORG:
                full += 1
                if full == len(back):
                    break
        for org, got in back.items():  # everything of its window up to the cursor
            self._total += len(got) - len(self._entries.get(org, ()))
            self._entries[org] = deque(reversed(got))
        return n

    def update(self, now: float, keep: dict[str, float]) -> int:
        """Read what was logged since the last call, for the organisations in ``keep``
        (organisation -> seconds back its rules need); an organisation new to ``keep``, or
        whose window grew, is read back that far first. Entries older than their
        organisation's ``keep`` are dropped, and organisations no longer in it. Returns how
        many entries were read."""
        if not keep:  # no log rule: nothing kept, nothing read (read back when one comes)
            self.cursor, self._entries, self._keep, self._total = None, {}, {}, 0
            return 0
        n = 0
        if self.cursor is None:
            self.cursor = self._head()
        grown = {o: k for o, k in keep.items() if k > self._keep.get(o, 0.0)}
        if grown:
            n += self._read_back(grown, now)
        self._keep = dict(keep)
        for org in [o for o in self._entries if o not in keep]:
            self._total -= len(self._entries.pop(org))
        for key, raw in self.store.scan("audit/", start=entry_key(self.cursor + 1)):
            self.cursor = int(key.rsplit("/", 1)[1])
            n += 1
            e = _entry(raw)
            if e is None or e.org not in keep:
                continue
            q = self._entries.setdefault(e.org, deque())
            q.append(e)
            self._total += 1
            if len(q) > MAX_PER_ORG:
                q.popleft()
                self._total -= 1
        for org, q in self._entries.items():
            cut = now - keep[org]
            while q and q[0].time < cut:
                q.popleft()
                self._total -= 1
        self._trim()
        return n

    def _trim(self) -> None:
        """Over MAX_ENTRIES in all: the organisations with the most entries lose their oldest
        until all of them together fit (the others keep every entry)."""
        excess = self._total - MAX_ENTRIES
        if excess <= 0:
            return
        sizes = sorted((len(q) for q in self._entries.values()), reverse=True)
        # the largest size ``cap`` such that capping every organisation at it frees enough
        lo, hi = 0, sizes[0]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if sum(max(0, x - mid) for x in sizes) >= excess:
                lo = mid
            else:
                hi = mid - 1
        cap = lo
        for q in self._entries.values():
            while len(q) > cap:
                q.popleft()
                self._total -= 1

    def size(self, org: str | None = None) -> int:
        if org is not None:
            return len(self._entries.get(org, ()))
        return self._total

    def window(self, org: str, start: float, end: float) -> Iterator[Entry]:
        """Entries of ``org`` logged between ``start`` and ``end`` (epoch seconds)."""
        for e in self._entries.get(org, ()):
            if start <= e.time <= end:
                yield e
