"""The one place that changes state: a :class:`Change` is written to the store together with
its audit entry in one atomic batch, and its events are published only once it is stored, so
the state, the audit log and the live stream never disagree."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from controller.audit.chain import Chain
from controller.events.bus import EventBus
from controller.events.model import Actor, Event
from controller.store.base import Batch, Store

# Fields that never enter the audit log or an event, whatever a caller puts in ``details``.
_SECRET_WORDS = ("password", "secret", "token", "private", "key", "credential", "apikey")


def scrub(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` with the value of every secret-sounding key masked, at any depth (in
    nested objects and in lists)."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        lk = str(k).lower()
        if any(w in lk for w in _SECRET_WORDS) and lk not in ("token_id", "key_id", "token_name"):
            out[k] = "***"
        else:
            out[k] = _scrub_value(v)
    return out


def _scrub_value(v: Any) -> Any:
    if isinstance(v, dict):
        return scrub(v)
    if isinstance(v, list | tuple):
        return [_scrub_value(x) for x in v]
    return v


@dataclass
class Change:
    """What one action changes. An action that changes nothing (a failed login, a refused
    token) is a Change with no puts or deletes: it is still audited."""

    action: str  # "<kind>.<verb>", e.g. "token.create", "session.create"
    org: str = ""
    target_kind: str = ""
    target_id: str = ""
    outcome: str = "success"  # success, denied, failed
    details: dict[str, Any] = field(default_factory=dict)
    batch: Batch = field(default_factory=Batch)
    events: list[Event] = field(default_factory=list)

    def put(self, key: str, value: bytes) -> Change:
        self.batch.put(key, value)
        return self

    def delete(self, key: str) -> Change:
        self.batch.delete(key)
        return self

    def expect(self, key: str, value: bytes | None) -> Change:
        self.batch.expect[key] = value
        return self

    def event(self, type_: str, kind: str, id_: str, data: dict[str, Any] | None = None) -> Change:
        self.events.append(Event(type_, kind, id_, self.org, time.time(), data or {}))
        return self


class Writer:
    def __init__(self, store: Store, bus: EventBus | None = None) -> None:
        self.store = store
        self.bus = bus
        self.chain = Chain(store)
        self._lock = threading.Lock()

    def commit(self, actor: Actor, change: Change) -> dict[str, Any]:
        """Store the change and its audit entry atomically, then publish. Raises what the
        store raises (Conflict when an ``expect`` fails): then nothing was stored."""
        return self.commit_many(actor, [change])[0]

    def commit_many(self, actor: Actor, changes: list[Change]) -> list[dict[str, Any]]:
        """Several changes (say, everything one poll of a cloud found) with one audit entry
        each, stored in one atomic batch: all of them or, on a failed ``expect``, none."""
        now = time.time()
        entries = [{
            "time": now,
            "org": change.org or actor.org,
            "actor": actor.to_dict(),
            "action": change.action,
            "target": {"kind": change.target_kind, "id": change.target_id},
            "outcome": change.outcome,
            "source": {"ip": actor.ip, "via": actor.via},
            "details": scrub(change.details),
        } for change in changes]
        stored: list[dict[str, Any]] = []
        with self._lock:
            batch = Batch()
            head = self.chain.head
            for change, entry in zip(changes, entries, strict=True):
                for k, v in change.batch.puts.items():  # a later change wins over an earlier
                    batch.put(k, v)
                for k in change.batch.deletes:
                    batch.delete(k)
                batch.expect.update(change.batch.expect)
                out, head = self.chain.append(batch, entry, head)
                stored.append(out)
            self.store.write(batch)
            self.chain.advance(head)
        if self.bus is not None:
            events: list[Event] = []
            for change, out in zip(changes, stored, strict=True):
                events.extend(change.events)
                events.append(Event("audit", "log", out["id"], out["org"], out["time"], out))
            self.bus.publish(events)
        return stored
