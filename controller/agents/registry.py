"""Which agents are connected now: one session per agent, with its outbound queue. A newer
connection of the same agent replaces the older; revoking ends the session at once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Session:
    agent_id: str
    org: str
    ip: str
    outbox: asyncio.Queue[Any] = field(default_factory=lambda: asyncio.Queue(10_000))
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()


class Registry:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self.ever_connected: set[str] = set()

    def add(self, session: Session) -> None:
        old = self._sessions.get(session.agent_id)
        if old is not None:
            old.end("replaced by a newer connection of the same agent")
        self._sessions[session.agent_id] = session
        self.ever_connected.add(session.agent_id)

    def remove(self, session: Session) -> bool:
        """True when ``session`` was the agent's current one (so the agent is now offline)."""
        if self._sessions.get(session.agent_id) is session:
            del self._sessions[session.agent_id]
            return True
        return False

    def get(self, agent_id: str) -> Session | None:
        return self._sessions.get(agent_id)

    def end(self, agent_id: str, reason: str) -> bool:
        s = self._sessions.get(agent_id)
        if s is None:
            return False
        s.end(reason)
        return True

    def end_all(self, reason: str) -> None:
        for s in list(self._sessions.values()):
            s.end(reason)

    def __len__(self) -> int:
        return len(self._sessions)

    def connected_ids(self) -> set[str]:
        return set(self._sessions)
