"""Which agents are connected now: one session per agent. A newer connection of the same
agent replaces the older; revoking ends the session at once.

A session is the state of one agent's stream, kept small (``__slots__``, no queue, no task
of its own): a controller holds ten thousand of them. The stream's handler runs in one task
that reads the agent's messages and writes the answers itself; ``end()`` cancels that task,
which then closes the stream with the reason."""

from __future__ import annotations

import asyncio
from array import array
from typing import Any


class Session:
    __slots__ = ("agent_id", "org", "ip", "reason", "ended", "task", "context", "lock",
                 "sids", "stored", "acked", "ack_timer", "clock_offset", "clock_at")

    def __init__(self, agent_id: str, org: str, ip: str) -> None:
        self.agent_id = agent_id
        self.org = org
        self.ip = ip
        self.reason = ""
        self.ended = False
        self.task: asyncio.Task[Any] | None = None  # the stream's handler
        self.context: Any = None  # its grpc.aio.ServicerContext, to write to the agent
        self.lock = asyncio.Lock()  # one write at a time
        # the compact form's series references on this stream: ref -> series id
        self.sids = array("I")
        # batch seqs: the highest stored for this stream's agent, the highest acknowledged
        # to it, and the timer that acknowledges a lone batch later (see servicer.py)
        self.stored = 0
        self.acked = 0
        self.ack_timer: asyncio.TimerHandle | None = None
        # the agent's clock minus ours, in seconds (see note_clock), and when it was measured
        self.clock_offset: float | None = None
        self.clock_at = 0.0

    def note_clock(self, agent_ms: int, now: float) -> None:
        """One metric batch's collection time (the agent's clock) against ``now`` (ours, when
        it arrived). A batch spent time in transit, or in the agent's spool: each makes the
        agent look behind, never ahead, so the largest difference over a minute is the
        closest to the true offset."""
        if agent_ms <= 0:
            return
        offset = agent_ms / 1000.0 - now
        if self.clock_offset is None or offset > self.clock_offset or now - self.clock_at > 60:
            self.clock_offset, self.clock_at = offset, now

    def end(self, reason: str) -> None:
        """Close the stream: its handler is cancelled and ends it with ``reason``."""
        if self.ended:
            return
        self.reason = reason
        self.ended = True
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        task = self.task
        if task is not None and not task.done() and task is not _current_task():
            task.cancel()

    async def write(self, message: Any) -> None:
        """Send one message to the agent. gRPC allows one write at a time per stream: the
        handler writes most of them, a timer may write too."""
        async with self.lock:
            await self.context.write(message)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (a call from another thread: a bug, but harmless)
        return None


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

    def clock_offsets(self) -> dict[str, float | None]:
        """Each connected agent's clock offset in seconds (None: not measured yet)."""
        return {a: s.clock_offset for a, s in self._sessions.items()}
