"""Where provider calls run: a bounded thread pool (libcloud blocks), a timeout per call, and
one adapter per cloud and purpose, built lazily, rebuilt when the cloud's settings change and
closed when the cloud goes. Calls on one adapter are serialised (libcloud drivers are not
thread-safe); the poller and user actions use separate adapters so an action never waits
for a long poll."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from controller.clouds.providers.base import Adapter
from controller.errors import ProviderUnavailable

T = TypeVar("T")
Factory = Callable[[], Adapter]


class _Slot:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.adapter: Adapter | None = None
        self.rev = ""


class CloudRunner:
    def __init__(self, workers: int, timeout: float) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloud")
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._guard = threading.Lock()

    async def call(self, cloud_id: str, purpose: str, rev: str, factory: Factory,
                   fn: Callable[[Adapter], T], timeout: float | None = None, what: str = "") -> T:
        """``fn(adapter)`` in the pool; ProviderUnavailable when it takes over ``timeout``."""
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, self._run, (cloud_id, purpose), rev, factory, fn)
        try:
            return await asyncio.wait_for(fut, limit)
        except TimeoutError:
            raise ProviderUnavailable(f"the provider did not answer within {limit:g} s"
                                      + (f" while {what}" if what else ""),
                                      {"timeout": limit}) from None

    async def once(self, factory: Factory, fn: Callable[[Adapter], T], timeout: float | None = None,
                   what: str = "") -> T:
        """``fn`` on a fresh adapter that is closed afterwards (checking new credentials)."""
        limit = self.timeout if timeout is None else timeout

        def run() -> T:
            adapter = factory()
            try:
                return fn(adapter)
            finally:
                adapter.close()

        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._pool, run), limit)
        except TimeoutError:
            raise ProviderUnavailable(f"the provider did not answer within {limit:g} s"
                                      + (f" while {what}" if what else ""),
                                      {"timeout": limit}) from None

    def _run(self, key: tuple[str, str], rev: str, factory: Factory, fn: Callable[[Adapter], T]) -> T:
        with self._guard:
            slot = self._slots.setdefault(key, _Slot())
        with slot.lock:
            if slot.adapter is not None and slot.rev != rev:
                _close(slot.adapter)
                slot.adapter = None
            if slot.adapter is None:
                slot.adapter, slot.rev = factory(), rev
            return fn(slot.adapter)

    def forget(self, cloud_id: str) -> None:
        """Close the cloud's adapters (it was deleted or its credentials changed)."""
        with self._guard:
            keys = [k for k in self._slots if k[0] == cloud_id]
            slots = [self._slots.pop(k) for k in keys]
        for slot in slots:
            if slot.adapter is not None:
                _close(slot.adapter)

    def close(self) -> None:
        with self._guard:
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            if slot.adapter is not None:
                _close(slot.adapter)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _close(adapter: Any) -> None:
    try:
        adapter.close()
    except Exception:  # closing is best effort
        pass
