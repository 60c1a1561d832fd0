"""The cloud runner: calls run off the event loop with a timeout, one adapter per cloud and
purpose is reused, rebuilt when the cloud's settings change, and closed when forgotten."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from controller.clouds.providers.base import Adapter
from controller.clouds.runner import CloudRunner
from controller.errors import CredentialsRefused, ProviderAuthError, ProviderUnavailable


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
    seen = await r.call("o1", "c1", "poll", "rev1", Recording, lambda a: threading.get_ident())
    assert seen != loop_thread
    first = await r.call("o1", "c1", "poll", "rev1", Recording, lambda a: id(a))
    again = await r.call("o1", "c1", "poll", "rev1", Recording, lambda a: id(a))
    assert first == again and Recording.made == 1
    await r.call("o1", "c1", "action", "rev1", Recording, lambda a: None)
    assert Recording.made == 2  # actions never wait behind a poll's adapter
    await r.call("o1", "c1", "poll", "rev2", Recording, lambda a: None)
    assert Recording.made == 3 and Recording.closed == 1
    r.forget("c1")
    assert Recording.closed == 3
    r.close()


async def test_a_stuck_provider_of_one_organisation_does_not_starve_the_others() -> None:
    r = CloudRunner(workers=2, timeout=0.2)
    release = threading.Event()
    with pytest.raises(ProviderUnavailable, match="did not answer"):
        await r.call("A", "a1", "poll", "", Recording, lambda a: release.wait(5))
    # org A holds one worker at most (half the pool): its next call waits for a free one, in
    # vain, without taking a thread; org B still gets a worker at once
    with pytest.raises(ProviderUnavailable, match="still running"):
        await r.call("A", "a2", "poll", "", Recording, lambda a: release.wait(5))
    assert await r.call("B", "b1", "poll", "", Recording, lambda a: "ok") == "ok"
    # the stuck cloud's next call fails at once instead of queueing behind the hung one
    t0 = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="earlier call"):
        await r.call("A", "a1", "poll", "", Recording, lambda a: "never")
    assert time.monotonic() - t0 < 0.1
    release.set()
    await asyncio.sleep(0.2)
    assert await r.call("A", "a1", "poll", "", Recording, lambda a: "back") == "back"
    r.close()


async def test_a_call_that_takes_too_long_is_unavailable_not_a_hang() -> None:
    r = CloudRunner(workers=1, timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="did not answer within 0.2 s while polling"):
        await r.call("o1", "c1", "poll", "", Recording, lambda a: time.sleep(1), what="polling")
    assert time.monotonic() - t0 < 0.9
    with pytest.raises(ProviderUnavailable):
        await r.once("o1", Recording, lambda a: time.sleep(1), timeout=0.1)
    r.close()
    await asyncio.sleep(0)


class Refusing(Adapter):
    """Refuses as an adapter whose provider does not say which credential it refused."""

    credential = "apikey"

    def __init__(self) -> None:
        super().__init__({}, {})


async def test_every_refusal_leaves_as_a_4xx_naming_the_field() -> None:
    r = CloudRunner(workers=1, timeout=5)

    def plain(a: Adapter) -> None:  # a ProviderAuthError from code that knows no field
        raise ProviderAuthError("the key was refused", {"provider": "x", "field": "stale"})

    def named(a: Adapter) -> None:  # an adapter that read the field in the answer
        raise CredentialsRefused("the secret does not match", "apisecret", provider="x")

    for run in (lambda fn: r.call("o1", "c1", "poll", "", Refusing, fn),
                lambda fn: r.once("o1", Refusing, fn)):
        with pytest.raises(CredentialsRefused) as err:
            await run(plain)
        assert (err.value.status, err.value.code) == (422, "provider_auth")
        assert err.value.details == {"provider": "x", "field": "credentials.apikey"}
        assert err.value.message == "the key was refused"
        with pytest.raises(CredentialsRefused) as err:
            await run(named)
        assert err.value.details["field"] == "credentials.apisecret"
    r.close()
