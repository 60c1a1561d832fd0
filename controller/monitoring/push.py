"""Keeps every connected agent's custom metric sources current: an agent gets its list in its
Welcome (``welcome``), and again, whole, whenever it changes: a source created, edited or
deleted, its script refreshed, or the agent's machine changed (a tag added or removed, the
agent linked to a cloud machine). Changes are read from the live event bus, gathered for
DEBOUNCE seconds, and only agents whose list differs from what they have are written to.

One task (``run``), started and cancelled with the app. Blocks nothing for long: an agent's
sources take a few store reads."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from controller.agents.registry import Registry
from controller.events.bus import OVERFLOW, EventBus
from controller.events.model import Event
from controller.exec.agentlink import AgentLink
from controller.monitoring import wire
from controller.monitoring.sources import SourceService, SourceSpec, digest
from controller.settings import Settings

log = logging.getLogger(__name__)

DEBOUNCE = 0.2
KINDS = ("machine", "metricsource", "script")
_NONE = digest([])


class SourcePush:
    def __init__(self, settings: Settings, sources: SourceService, registry: Registry,
                 link: AgentLink, bus: EventBus) -> None:
        self.settings = settings
        self.sources = sources
        self.registry = registry
        self.link = link
        self.bus = bus
        self.sent: dict[str, str] = {}  # agent id -> digest of the list it has
        self._orgs: set[str] = set()
        self._machines: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self.pushes = 0
        link.handlers["metric_source_status"] = self.status

    def welcome(self, agent: dict[str, Any]) -> list[SourceSpec]:
        """The agent's sources for its Welcome (noted as sent)."""
        specs = self.sources.for_agent(agent)
        self.sent[agent["id"]] = digest(specs)
        return specs

    async def status(self, agent_id: str, fields: dict[str, Any]) -> None:
        event = self.sources.status(agent_id, fields)
        if event is not None:
            self.bus.publish([event])

    # ---- following changes -----------------------------------------------------------------
    def note(self, ev: Event) -> None:
        if ev.kind == "machine":
            self._machines.add((ev.org, ev.id))
            merged = ev.data.get("merged_into")
            if merged:
                self._machines.add((ev.org, str(merged)))
        else:
            self._orgs.add(ev.org)
        self._wake.set()

    async def run(self) -> None:
        """Follow the bus until it closes (the controller stops) or this task is cancelled."""
        flusher = asyncio.get_running_loop().create_task(self._flusher())
        try:
            while True:
                # internal: it makes no organisation look watched (pollers speed up for those)
                sub = self.bus.subscribe(None, KINDS, maxsize=10_000, internal=True)
                lost = False
                try:
                    async for ev in sub:
                        if ev is OVERFLOW:  # events were lost: look at every organisation
                            lost = True
                            break
                        self.note(ev)
                finally:
                    sub.close()
                if not lost:
                    return
                self._orgs.update(self._connected_orgs())
                self._wake.set()
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(DEBOUNCE)  # a burst of changes (a poll, a tag on many) at once
            try:
                await self.flush()
            except Exception:  # the next change tries again
                log.exception("pushing metric sources failed")

    def _connected_orgs(self) -> set[str]:
        return {s.org for a in self.registry.connected_ids() if (s := self.registry.get(a))}

    async def flush(self) -> None:
        """Push to every agent the gathered changes may concern."""
        self._wake.clear()
        orgs, self._orgs = self._orgs, set()
        machines, self._machines = self._machines, set()
        agents: set[str] = set()
        if orgs:
            for aid in self.registry.connected_ids():
                s = self.registry.get(aid)
                if s is not None and s.org in orgs:
                    agents.add(aid)
        for org, mid in machines:
            raw = self.sources.store.get(f"machine/{org}/{mid}") if "/" not in mid else None
            candidates = {mid}
            if raw is not None:
                candidates.add(str(json.loads(raw).get("agent") or ""))
            agents.update(a for a in candidates if a and self.link.connected(a))
        for aid in sorted(agents):
            await self.push(aid)

    async def push(self, agent_id: str) -> None:
        """Send the agent its list if it differs from what it has (only after its Welcome)."""
        have = self.sent.get(agent_id)
        if have is None:
            return
        if not self.link.connected(agent_id):
            self.sent.pop(agent_id, None)
            return
        agent = self.sources.agent(agent_id)
        if agent is None or agent.get("revoked"):
            return
        if have == _NONE and not self.sources.has_sources(agent["org"]):
            return
        specs = self.sources.for_agent(agent)
        d = digest(specs)
        if d == have:
            return
        try:
            await self.link.write(agent_id, wire.config(self.settings.metric_interval, agent, specs))
        except Exception as exc:  # noqa: BLE001 - gone meanwhile: its next Welcome has them
            log.info("agent %s: metric sources not sent: %s", agent_id, exc)
            return
        self.sent[agent_id] = d
        self.pushes += 1
        log.info("agent %s: %d metric source(s) sent", agent_id, len(specs))
