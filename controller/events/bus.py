"""In-process publish/subscribe of live events, per organisation. Slow subscribers do not
hold up publishers: past ``maxsize`` queued events a subscriber is told it overflowed and is
dropped (its client reconnects and re-reads state)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable

from controller.events.model import Event

log = logging.getLogger(__name__)

OVERFLOW = Event(type="overflow", kind="", id="", org="", time=0.0)
_END = Event(type="end", kind="", id="", org="", time=0.0)  # never sent: ends the iteration


class Subscription:
    def __init__(self, bus: EventBus, org: str | None, kinds: frozenset[str], maxsize: int,
                 internal: bool = False) -> None:
        self._bus = bus
        self.org = org  # None: every organisation (platform admins)
        self.kinds = kinds
        self.internal = internal  # the controller's own follower: nobody watches through it
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.closed = False

    def wants(self, event: Event) -> bool:
        # an event of no organisation (a failed login, a refused token) is the platform's:
        # only for org=None (platform admins' allorgs) subscriptions, never for org ""
        if self.org is not None and (not event.org or event.org != self.org):
            return False
        return not self.kinds or event.kind in self.kinds

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.closed = True
            self._bus.unsubscribe(self)
            # make room for the marker so the reader learns why it ends
            self.queue.get_nowait()
            self.queue.put_nowait(OVERFLOW)

    def close(self) -> None:
        self.closed = True
        self._bus.unsubscribe(self)

    def end(self) -> None:
        """Close, and end the reader's iteration now (the controller is stopping)."""
        self.close()
        while True:
            try:
                self.queue.put_nowait(_END)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            ev = await self.queue.get()
            if ev is _END:
                return
            yield ev
            if ev is OVERFLOW:
                return


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Publishing from another thread hands the events to this loop."""
        self._loop = loop

    def subscribe(self, org: str | None, kinds: Iterable[str] = (), maxsize: int = 1000,
                  internal: bool = False) -> Subscription:
        sub = Subscription(self, org, frozenset(kinds), maxsize, internal)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def close(self) -> None:
        """End every subscriber's stream (on shutdown, so none holds the stop up)."""
        for sub in list(self._subs):
            sub.end()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def watching(self, org: str) -> bool:
        """Whether someone of ``org`` (or a platform admin) follows live events: the pollers
        then refresh that organisation's clouds faster."""
        return any((s.org is None or s.org == org) and not s.internal for s in self._subs)

    def publish(self, events: Iterable[Event]) -> None:
        evs = list(events)
        if not evs or not self._subs:
            return
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is not loop:
            loop.call_soon_threadsafe(self._deliver, evs)
        else:
            self._deliver(evs)

    def _deliver(self, events: list[Event]) -> None:
        for sub in list(self._subs):
            for ev in events:
                if sub.wants(ev):
                    sub.offer(ev)
