"""The audit log as rules on logs read it: incrementally, by sequence number, keeping the
entries of the longest window a rule asks for. On start the window is read back from the
newest entry, so a restart loses nothing a rule still counts (and the incidents those
entries caused are still open, so nothing fires twice). The rules' own entries
(``incident.*``, ``notification.*``) are never counted: a rule cannot feed itself."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from controller.audit.chain import HEAD_KEY, entry_key
from controller.store.base import Store

MAX_ENTRIES = 200_000           # kept in all, whatever the windows
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
    def __init__(self, store: Store) -> None:
        self.store = store
        self.cursor: int | None = None
        self._entries: deque[Entry] = deque()

    def _head(self) -> int:
        raw = self.store.get(HEAD_KEY)
        return int(json.loads(raw)["seq"]) if raw else 0

    def update(self, now: float, keep: float) -> int:
        """Read what was logged since the last call (the first call reads ``keep`` seconds
        back); drop entries older than ``keep`` seconds. Returns how many were read."""
        n = 0
        if self.cursor is None:
            head = self._head()
            back: list[Entry] = []
            for _, raw in self.store.scan("audit/", start=entry_key(head), reverse=True):
                n += 1
                e = _entry(raw)
                if e is not None and e.time < now - keep:
                    break
                if e is not None:
                    back.append(e)
                if n >= MAX_ENTRIES:
                    break
            self._entries.extend(reversed(back))
            self.cursor = head
        else:
            for key, raw in self.store.scan("audit/", start=entry_key(self.cursor + 1)):
                self.cursor = int(key.rsplit("/", 1)[1])
                n += 1
                e = _entry(raw)
                if e is not None:
                    self._entries.append(e)
        entries = self._entries
        while entries and (entries[0].time < now - keep or len(entries) > MAX_ENTRIES):
            entries.popleft()
        return n

    def window(self, org: str, start: float, end: float) -> Iterator[Entry]:
        """Entries of ``org`` logged between ``start`` and ``end`` (epoch seconds)."""
        for e in self._entries:
            if e.org == org and start <= e.time <= end:
                yield e
