"""The cloud runner: calls run off the event loop with a timeout, one adapter per cloud and
purpose is reused, rebuilt when the cloud's settings change, and closed when forgotten."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from controller.clouds.providers.base import Adapter
from controller.clouds.runner import CloudRunner
from controller.errors import ProviderUnavailable


class Recording(Adapter):
    made = 0
    closed = 0

    def __init__(self) -> None:
        super().__init__({}, {})
        Recording.made += 1

    def close(self) -> None:
        Recording.closed += 1


async def test_calls_run_in_threads_reuse_adapters_and_rebuild_on_change() -> None:
    Recording.made = Recording.closed = 0
    r = CloudRunner(workers=2, timeout=5)
    loop_thread = threading.get_ident()
    seen = await r.call("c1", "poll", "rev1", Recording, lambda a: threading.get_ident())
    assert seen != loop_thread
    first = await r.call("c1", "poll", "rev1", Recording, lambda a: id(a))
    again = await r.call("c1", "poll", "rev1", Recording, lambda a: id(a))
    assert first == again and Recording.made == 1
    await r.call("c1", "action", "rev1", Recording, lambda a: None)
    assert Recording.made == 2  # actions never wait behind a poll's adapter
    await r.call("c1", "poll", "rev2", Recording, lambda a: None)
    assert Recording.made == 3 and Recording.closed == 1
    r.forget("c1")
    assert Recording.closed == 3
    r.close()


async def test_a_call_that_takes_too_long_is_unavailable_not_a_hang() -> None:
    r = CloudRunner(workers=1, timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="did not answer within 0.2 s while polling"):
        await r.call("c1", "poll", "", Recording, lambda a: time.sleep(1), what="polling")
    assert time.monotonic() - t0 < 0.9
    with pytest.raises(ProviderUnavailable):
        await r.once(Recording, lambda a: time.sleep(1), timeout=0.1)
    r.close()
    await asyncio.sleep(0)
