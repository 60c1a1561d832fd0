"""One poller per cloud: polls at the cloud's interval with jitter, faster right after an
action and while someone of the organisation watches live events, never two polls of one
cloud at once, and backs off on failures (the failure is on the cloud's status, with its
reason: never a silent stop).

Time and chance come in through ``clock`` (monotonic seconds), ``wait`` (wait for an event
at most so many seconds) and ``rng`` (the jitter), so tests can drive a poller without
sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from controller.clouds.service import CloudService
from controller.events.bus import EventBus
from controller.events.model import Event
from controller.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF = 1800.0
AFTER_ACTION = (2.0, 10.0, 30.0)  # extra polls after an action, seconds after it ends
JITTER = (0.9, 1.1)               # every interval and backoff is multiplied by this much
FIRST_SPREAD = 5.0                # at start, clouds are first polled within this many seconds
MIN_DELAY = 0.5                   # never sooner than this after a poll (boosts included)

Wait = Callable[[asyncio.Event, float], Awaitable[None]]


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Return when ``event`` is set or ``seconds`` have passed, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


class Pollers:
    def __init__(self, settings: Settings, clouds: CloudService, bus: EventBus | None, *,
                 clock: Callable[[], float] = time.monotonic, wait: Wait = wait_event,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.clouds = clouds
        self.bus = bus
        self.clock = clock
        self.wait = wait
        self.rng = rng or random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._boost: dict[str, list[float]] = {}
        self._event_loop: asyncio.AbstractEventLoop | None = None
        # called after each poll with (org, cloud id, its new status, seconds it took): the
        # /metrics figures
        self.on_polled: list[Callable[[str, str, dict[str, Any], float], None]] = []

    def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self.clouds.on_change.append(self._on_change_any_thread)
        for org, cid in self.clouds.pollable():
            self._ensure(org, cid, first_delay=self.rng.uniform(0, FIRST_SPREAD))

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    def _on_change_any_thread(self, org: str, cloud_id: str, removed: bool) -> None:
        """Clouds change from request handlers, some in worker threads: act on the loop."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._event_loop is not None and running is not self._event_loop:
            self._event_loop.call_soon_threadsafe(self._on_change, org, cloud_id, removed)
        else:
            self._on_change(org, cloud_id, removed)

    def _on_change(self, org: str, cloud_id: str, removed: bool) -> None:
        if removed:
            task = self._tasks.pop(cloud_id, None)
            if task is not None:
                task.cancel()
            for d in (self._wake, self._locks, self._boost):
                d.pop(cloud_id, None)  # type: ignore[attr-defined]
            return
        self._ensure(org, cloud_id, first_delay=0)
        self.poke(org, cloud_id)

    def _ensure(self, org: str, cloud_id: str, first_delay: float) -> None:
        if cloud_id in self._tasks and not self._tasks[cloud_id].done():
            return
        self._wake[cloud_id] = asyncio.Event()
        self._tasks[cloud_id] = asyncio.get_running_loop().create_task(
            self._loop(org, cloud_id, first_delay), name=f"poll-{cloud_id}")

    def poke(self, org: str, cloud_id: str) -> None:
        """Poll now, and a few times more shortly after (an action's effect takes a while)."""
        now = self.clock()
        self._boost[cloud_id] = [now + d for d in AFTER_ACTION]
        ev = self._wake.get(cloud_id)
        if ev is not None:
            ev.set()

    async def poll_now(self, org: str, cloud_id: str) -> dict[str, Any]:
        """One poll right away (waits for a running one to end first)."""
        async with self._lock(cloud_id):
            return await self._poll(org, cloud_id)

    def _lock(self, cloud_id: str) -> asyncio.Lock:
        return self._locks.setdefault(cloud_id, asyncio.Lock())

    async def _poll(self, org: str, cloud_id: str) -> dict[str, Any]:
        started = self.clock()
        status = await self.clouds.poll(org, cloud_id)
        for observe in self.on_polled:
            observe(org, cloud_id, status, self.clock() - started)
        if self.bus is not None:
            self.bus.publish([Event("changed", "cloud", cloud_id, org, time.time(),
                                    {"status": status.get("state", ""),
                                     "last_error": status.get("last_error", ""),
                                     "error_field": status.get("error_field", "")})])
        return status

    def _next_delay(self, org: str, cloud_id: str, doc: dict[str, Any], status: dict[str, Any]) -> float:
        interval = float(doc.get("poll_interval") or self.settings.cloud_poll_interval)
        if status.get("state") == "error":
            failures = int(status.get("failures", 1))
            return min(interval * 2 ** min(failures - 1, 10), MAX_BACKOFF) * self.rng.uniform(*JITTER)
        now = self.clock()
        pending = [t for t in self._boost.get(cloud_id, []) if t > now]
        self._boost[cloud_id] = pending
        if pending:
            return max(MIN_DELAY, pending[0] - now)
        if self.bus is not None and self.bus.watching(org):
            interval = min(interval, float(self.settings.cloud_fast_poll_interval))
        return interval * self.rng.uniform(*JITTER)

    async def _loop(self, org: str, cloud_id: str, first_delay: float) -> None:
        delay = first_delay
        wake = self._wake[cloud_id]
        while True:
            await self.wait(wake, delay)
            wake.clear()
            doc = self.clouds.load_any(org, cloud_id)
            if doc is None:
                return
            if not doc.get("enabled", True):
                delay = float(self.settings.cloud_poll_interval)
                continue
            try:
                async with self._lock(cloud_id):
                    status = await self._poll(org, cloud_id)
            except Exception:  # poll() records provider failures itself; this is a bug
                log.exception("the poller of cloud %s failed", cloud_id)
                status = {"state": "error", "failures": 1}
            delay = self._next_delay(org, cloud_id, doc, status)
