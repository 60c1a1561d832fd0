"""Where provider calls run: a bounded thread pool (libcloud blocks), a timeout per call, and
one adapter per cloud and purpose, built lazily, rebuilt when the cloud's settings change and
closed when the cloud goes. The poller and user actions use separate adapters so an action
never waits for a long poll. A refused credential always leaves as ``CredentialsRefused``
naming the field (see :func:`refused`).

Fairness. A thread cannot be stopped: a provider that trickles its answer keeps its thread
past the timeout. So calls to one adapter wait their turn on the event loop (never in a
worker), a call to an adapter whose previous call timed out and is still running fails at
once, and one organisation never holds more than half the workers: a stuck provider (or a
hostile endpoint) of one organisation cannot starve the others."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from controller.clouds.providers.base import Adapter
from controller.errors import CredentialsRefused, ProviderAuthError, ProviderUnavailable
from controller.threads import named_pool

T = TypeVar("T")
Factory = Callable[[], Adapter]


class _Slot:
    def __init__(self) -> None:
        self.turn = asyncio.Lock()      # whose turn it is (on the loop)
        self.adapter: Adapter | None = None
        self.rev = ""
        self.running = False            # a thread is in a call on this adapter
        self.timed_out = False          # ... and its caller gave up waiting


class CloudRunner:
    def __init__(self, workers: int, timeout: float) -> None:
        self.timeout = timeout
        self.workers = workers
        self.per_org = max(1, workers // 2)
        self._pool = named_pool("cloud", workers)
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._org_running: dict[str, int] = {}
        self._freed: asyncio.Condition | None = None

    def _cond(self) -> asyncio.Condition:
        if self._freed is None:
            self._freed = asyncio.Condition()
        return self._freed

    async def call(self, org: str, cloud_id: str, purpose: str, rev: str, factory: Factory,
                   fn: Callable[[Adapter], T], timeout: float | None = None, what: str = "") -> T:
        """``fn(adapter)`` in the pool; ProviderUnavailable when it takes over ``timeout``."""
        slot = self._slots.setdefault((cloud_id, purpose), _Slot())
        async with slot.turn:
            if slot.running and slot.timed_out:
                raise ProviderUnavailable("the provider has not finished answering an earlier call "
                                          "that timed out; try again later", {"cloud": cloud_id})

            def run() -> T:
                if slot.adapter is not None and slot.rev != rev:
                    _close(slot.adapter)
                    slot.adapter = None
                if slot.adapter is None:
                    slot.adapter, slot.rev = factory(), rev
                adapter = slot.adapter
                try:
                    return fn(adapter)
                except ProviderAuthError as exc:
                    raise refused(exc, adapter) from None

            return await self._dispatch(org, run, timeout, what, slot)

    async def once(self, org: str, factory: Factory, fn: Callable[[Adapter], T],
                   timeout: float | None = None, what: str = "") -> T:
        """``fn`` on a fresh adapter that is closed afterwards (checking new credentials)."""

        def run() -> T:
            adapter = factory()
            try:
                return fn(adapter)
            except ProviderAuthError as exc:
                raise refused(exc, adapter) from None
            finally:
                _close(adapter)

        return await self._dispatch(org, run, timeout, what, None)

    async def _dispatch(self, org: str, run: Callable[[], T], timeout: float | None, what: str,
                        slot: _Slot | None) -> T:
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        cond = self._cond()
        started = loop.time()

        async def my_turn() -> None:
            async with cond:
                await cond.wait_for(lambda: self._org_running.get(org, 0) < self.per_org)
                self._org_running[org] = self._org_running.get(org, 0) + 1

        try:
            await asyncio.wait_for(my_turn(), limit)
        except TimeoutError:
            raise ProviderUnavailable(f"your organisation's earlier provider calls are still "
                                      f"running; none came free within {limit:g} s", {"timeout": limit}) from None
        budget = max(0.0, limit - (loop.time() - started))
        if slot is not None:
            slot.running, slot.timed_out = True, False

        def finished() -> None:
            self._org_running[org] -= 1
            if slot is not None:
                slot.running = slot.timed_out = False

            async def notify() -> None:
                async with cond:
                    cond.notify_all()

            loop.create_task(notify())

        def in_thread() -> T:
            try:
                return run()
            finally:
                loop.call_soon_threadsafe(finished)

        fut = loop.run_in_executor(self._pool, in_thread)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), budget)
        except TimeoutError:
            if slot is not None:
                slot.timed_out = True
            fut.add_done_callback(_swallow)
            raise ProviderUnavailable(f"the provider did not answer within {limit:g} s"
                                      + (f" while {what}" if what else ""),
                                      {"timeout": limit}) from None

    def forget(self, cloud_id: str) -> None:
        """Close the cloud's adapters (it was deleted or its credentials changed)."""
        keys = [k for k in self._slots if k[0] == cloud_id]
        for k in keys:
            slot = self._slots.pop(k)
            if slot.adapter is not None and not slot.running:
                _close(slot.adapter)

    def close(self) -> None:
        for slot in self._slots.values():
            if slot.adapter is not None and not slot.running:
                _close(slot.adapter)
        self._slots.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


def refused(exc: ProviderAuthError, adapter: Adapter) -> CredentialsRefused:
    """Every refusal of a cloud's credentials leaves as :class:`CredentialsRefused` (a 4xx)
    naming the refused field: the one the adapter found in the provider's answer, else the
    one a refusal of that provider is about."""
    if isinstance(exc, CredentialsRefused) and exc.credential:
        return exc
    details = {k: v for k, v in exc.details.items() if k != "field"}
    return CredentialsRefused(exc.message, adapter.refused_credential() or None, **details)


def _swallow(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()  # a late failure of a call nobody waits for any more


def _close(adapter: Any) -> None:
    try:
        adapter.close()
    except Exception:  # closing is best effort
        pass
