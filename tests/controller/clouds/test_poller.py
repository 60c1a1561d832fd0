"""The pollers, on a virtual clock: when each cloud is polled (jittered intervals, backoff
after failures, the extra polls after an action, faster while someone watches), that one cloud
is never polled twice at once, that disabled and removed clouds are left alone; and, with the
real cloud service behind them, what a failing and recovering cloud shows (its status, its
``failures``, the ``cloud.poll_failed``/``cloud.poll_recovered`` audit entries, the event).

No test sleeps: the pollers take their clock, their waiting and their jitter from here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from controller.accounts.model import Principal
from controller.clouds import poller as poller_module
from controller.clouds.poller import Pollers
from controller.clouds.providers import registry
from controller.clouds.providers.base import Adapter, Capability, MachineRecord
from controller.clouds.service import CloudService
from controller.errors import CredentialsRefused, ProviderAuthError, ProviderUnavailable
from controller.events.model import Actor, Event
from controller.events.writer import Writer
from controller.secrets import SecretBox
from controller.settings import Settings
from controller.store import open_store

ORG, OTHER = "o1", "o2"
INTERVAL, FAST = 60.0, 15.0      # the settings' poll intervals, as given to the pollers below
# the pollers' contract (controller.clouds.poller), written out: a change there must be seen
JITTER = (0.9, 1.1)              # intervals and backoffs are multiplied by 0.9 to 1.1
FIRST_SPREAD = 5.0               # at start, clouds are first polled within 5 s
MAX_BACKOFF = 1800.0             # failures double the wait up to 30 minutes
AFTER_ACTION = (2.0, 10.0, 30.0)  # extra polls 2, 10 and 30 s after an action


# ---- the virtual clock ---------------------------------------------------------------------------
class Clock:
    """Monotonic time that moves only when a test says so. ``wait`` is the pollers' way of
    waiting: it returns when the event is set or its deadline is reached by :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + seconds, fut)
        self._sleepers.append(entry)
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({fut, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its deadline, in order."""
        target = self.now + seconds
        while True:
            await settle()
            due = [deadline for deadline, fut in self._sleepers
                   if deadline <= target and not fut.done()]
            if not due:
                break
            self.now = max(self.now, min(due))
            for deadline, fut in list(self._sleepers):
                if deadline <= self.now and not fut.done():
                    fut.set_result(None)
        self.now = target
        await settle()


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


class Rng:
    """The jitter: ``pick`` chooses from (low, high); the middle (1.0) by default."""

    def __init__(self, pick: Callable[[float, float], float] = lambda a, b: (a + b) / 2) -> None:
        self.pick = pick
        self.asked: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return self.pick(a, b)


# ---- a cloud service and a bus that record -------------------------------------------------------
class FakeClouds:
    """What the pollers use of the cloud service: which clouds to poll, their documents, and
    a poll that records when it ran and answers from ``answers`` (then "ok")."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.on_change: list[Any] = []
        self.docs: dict[str, dict[str, Any]] = {}
        self.polls: list[tuple[str, float]] = []
        self.answers: dict[str, list[dict[str, Any]]] = {}
        self.gate: asyncio.Event | None = None  # when set up: polls wait for it
        self.running = self.most_running = 0

    def add(self, cid: str, org: str = ORG, **doc: Any) -> None:
        self.docs[cid] = {"id": cid, "org": org, "name": cid, "provider": "linode",
                          "config": {}, "enabled": True, **doc}

    def pollable(self) -> list[tuple[str, str]]:
        return [(d["org"], cid) for cid, d in self.docs.items()]

    def load_any(self, org: str, cloud_id: str) -> dict[str, Any] | None:
        return self.docs.get(cloud_id)

    async def poll(self, org: str, cloud_id: str) -> dict[str, Any]:
        self.polls.append((cloud_id, self.clock.now))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            queue = self.answers.get(cloud_id) or []
            return queue.pop(0) if queue else {"state": "ok", "failures": 0}
        finally:
            self.running -= 1

    def times(self, cloud_id: str) -> list[float]:
        return [t for cid, t in self.polls if cid == cloud_id]

    def gaps(self, cloud_id: str) -> list[float]:
        t = self.times(cloud_id)
        return [round(b - a, 6) for a, b in zip(t, t[1:], strict=False)]


class FakeBus:
    def __init__(self) -> None:
        self.watchers: set[str] = set()
        self.events: list[Event] = []

    def watching(self, org: str) -> bool:
        return org in self.watchers

    def publish(self, events: Any) -> None:
        self.events.extend(events)


def settings() -> Settings:
    return Settings(cloud_poll_interval=int(INTERVAL), cloud_fast_poll_interval=int(FAST))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clouds(clock: Clock) -> FakeClouds:
    return FakeClouds(clock)


@pytest.fixture
def bus() -> FakeBus:
    return FakeBus()


@pytest.fixture
async def make(clock: Clock, clouds: FakeClouds,
               bus: FakeBus) -> AsyncIterator[Callable[..., Pollers]]:
    made: list[Pollers] = []

    def build(rng: Any = None) -> Pollers:
        p = Pollers(settings(), clouds, bus, clock=clock, wait=clock.wait,  # type: ignore[arg-type]
                    rng=rng or Rng())
        made.append(p)
        return p

    yield build
    for p in made:
        await p.stop()


# ---- when clouds are polled ------------------------------------------------------------------------
async def test_intervals_are_jittered_within_their_bounds(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock) -> None:
    import random

    for cid in ("a", "b", "c"):
        clouds.add(cid)
    start = clock.now
    make(random.Random(7)).start()
    await clock.advance(40 * INTERVAL)
    for cid in ("a", "b", "c"):
        first = clouds.times(cid)[0] - start
        assert 0 <= first <= FIRST_SPREAD, first  # spread at start, not all at once
        gaps = clouds.gaps(cid)
        assert len(gaps) >= 30
        low, high = INTERVAL * JITTER[0], INTERVAL * JITTER[1]
        assert all(low <= g <= high for g in gaps), gaps
        assert max(gaps) - min(gaps) > 0.05 * INTERVAL, gaps  # jittered, not a fixed beat
    assert len({clouds.times(c)[0] for c in ("a", "b", "c")}) == 3


@pytest.mark.parametrize(("pick", "factor"), [(min, JITTER[0]), (max, JITTER[1])])
async def test_the_jitter_is_applied_to_the_interval_at_its_extremes(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock,
        pick: Callable[[float, float], float], factor: float) -> None:
    clouds.add("a")
    make(Rng(pick)).start()
    await clock.advance(10 * INTERVAL)
    assert clouds.gaps("a")[:5] == [pytest.approx(INTERVAL * factor)] * 5


async def test_one_cloud_is_never_polled_twice_at_once(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock) -> None:
    clouds.add("a")
    clouds.gate = asyncio.Event()
    p = make()
    p.start()
    await clock.advance(FIRST_SPREAD)  # the first poll starts, and hangs at the provider
    assert len(clouds.polls) == 1 and clouds.running == 1
    # meanwhile: a user asks for a poll, an action ends (poke), the cloud is edited, and its
    # next interval (and several more) pass
    asked = asyncio.ensure_future(p.poll_now(ORG, "a"))
    p.poke(ORG, "a")
    for cb in clouds.on_change:
        cb(ORG, "a", False)
    await clock.advance(5 * INTERVAL)
    assert len(clouds.polls) == 1 and clouds.most_running == 1
    clouds.gate.set()
    await settle()
    assert (await asyncio.wait_for(asked, 1))["state"] == "ok"
    await clock.advance(3 * INTERVAL)
    assert clouds.most_running == 1
    assert len(clouds.polls) >= 3  # the waiting ones ran, one after the other


async def test_failures_back_off_doubling_to_the_cap_then_return_to_the_interval(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock) -> None:
    clouds.add("a")
    n = 9
    clouds.answers["a"] = [{"state": "error", "failures": k} for k in range(1, n + 1)]
    make().start()
    await clock.advance(2 * MAX_BACKOFF * n)
    gaps = clouds.gaps("a")
    backoff = [min(INTERVAL * 2 ** k, MAX_BACKOFF) for k in range(n)]
    assert backoff[:6] == [60, 120, 240, 480, 960, 1800] and backoff[-1] == MAX_BACKOFF
    assert gaps[:n] == backoff
    assert gaps[n:n + 3] == [INTERVAL] * 3  # the poll after the last failure succeeded


async def test_the_backoff_cap_holds_however_many_failures(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock) -> None:
    clouds.add("a")
    clouds.answers["a"] = [{"state": "error", "failures": k} for k in (40, 1000)]
    make(Rng(max)).start()
    await clock.advance(10 * MAX_BACKOFF)
    assert clouds.gaps("a")[:2] == [pytest.approx(MAX_BACKOFF * JITTER[1])] * 2


async def test_an_action_brings_extra_polls_then_the_usual_interval(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock) -> None:
    clouds.add("a")
    p = make()
    p.start()
    await clock.advance(FIRST_SPREAD + 20)  # first poll done, the next is 60 s after it
    acted = clock.now
    before = len(clouds.polls)
    p.poke(ORG, "a")
    await clock.advance(AFTER_ACTION[-1] + INTERVAL + 1)
    after = [round(t - acted, 6) for t in clouds.times("a")[before:]]
    assert after == [0, *AFTER_ACTION, AFTER_ACTION[-1] + INTERVAL], after


async def test_polls_are_faster_while_someone_of_the_org_watches(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock, bus: FakeBus) -> None:
    clouds.add("mine")
    clouds.add("theirs", org=OTHER)
    make().start()
    await clock.advance(FIRST_SPREAD + 3 * INTERVAL)
    assert clouds.gaps("mine") == [INTERVAL] * 3
    bus.watchers.add(ORG)  # someone of the organisation opens the live view
    mark = len(clouds.times("mine"))
    await clock.advance(INTERVAL + 4 * FAST)  # the wait under way ends, then fast ones
    assert clouds.gaps("mine")[mark:][:4] == [FAST] * 4
    assert set(clouds.gaps("theirs")) == {INTERVAL}  # another organisation's: unchanged
    bus.watchers.clear()
    mark = len(clouds.times("mine"))
    await clock.advance(FAST + 3 * INTERVAL)
    assert clouds.gaps("mine")[mark:][:2] == [INTERVAL] * 2


async def test_a_disabled_cloud_is_not_polled_until_enabled(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock) -> None:
    clouds.add("off", enabled=False)
    make().start()
    await clock.advance(20 * INTERVAL)
    assert clouds.times("off") == []
    clouds.docs["off"]["enabled"] = True  # what an edit does, and tells the pollers
    for cb in clouds.on_change:
        cb(ORG, "off", False)
    await settle()
    assert clouds.times("off") == [clock.now]


async def test_a_removed_cloud_is_not_polled_again(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock) -> None:
    clouds.add("gone")
    clouds.add("vanished")
    p = make()
    p.start()
    await clock.advance(FIRST_SPREAD + 1)
    # removed through the service (it tells the pollers) and removed under it (no word)
    del clouds.docs["gone"]
    for cb in clouds.on_change:
        cb(ORG, "gone", True)
    del clouds.docs["vanished"]
    await clock.advance(10 * INTERVAL)
    assert len(clouds.times("gone")) == 1 and len(clouds.times("vanished")) == 1
    assert "gone" not in p._tasks
    vanished = p._tasks["vanished"]
    assert vanished.done() and vanished.exception() is None  # it ended at its next wake-up


async def test_a_new_cloud_is_polled_at_once(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock) -> None:
    make().start()
    clouds.add("new")
    for cb in clouds.on_change:
        cb(ORG, "new", False)
    await settle()
    assert clouds.times("new") == [clock.now]


async def test_a_bug_in_a_poll_does_not_end_the_poller(
        make: Callable[..., Pollers], clouds: FakeClouds, clock: Clock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    clouds.add("a")
    calls = 0
    original = clouds.poll

    async def broken_once(org: str, cid: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            clouds.polls.append((cid, clock.now))
            raise RuntimeError("a bug")
        return await original(org, cid)

    monkeypatch.setattr(clouds, "poll", broken_once)
    monkeypatch.setattr(poller_module.log, "exception", lambda *a, **k: None)
    make().start()
    await clock.advance(FIRST_SPREAD + 3 * INTERVAL)
    assert clouds.gaps("a")[:2] == [INTERVAL, INTERVAL]  # taken as one failure, then on


# ---- what a failing cloud shows (the real cloud service behind the pollers) ----------------------
class Provider(Adapter):
    """A provider whose answers the test sets: machines, or a failure to raise."""

    capabilities = frozenset({Capability.MACHINES})
    credential = "apikey"
    fail: Exception | None = None

    def list_machines(self) -> list[MachineRecord]:
        if Provider.fail is not None:
            raise Provider.fail
        return [MachineRecord(external_id="m1", name="web", state="running")]


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  bus: FakeBus) -> AsyncIterator[CloudService]:
    monkeypatch.setattr(registry, "build", lambda name, config, secrets, timeout:
                        Provider(config, secrets, timeout))
    Provider.fail = None
    store = open_store(tmp_path / "db")
    svc = CloudService(Settings(data_dir=str(tmp_path), cloud_workers=2),
                       store, Writer(store, bus), SecretBox(b"k" * 32))  # type: ignore[arg-type]
    yield svc
    svc.runner.close()
    store.close()


def audited(bus: FakeBus, action: str) -> list[dict[str, Any]]:
    return [e.data for e in bus.events if e.type == "audit" and e.data.get("action") == action]


async def test_failures_show_on_the_cloud_with_the_reason_and_are_audited_once(
        service: CloudService, bus: FakeBus, clock: Clock) -> None:
    user = {"id": "u1", "email": "ops@example.com"}
    p = Principal(user, {"id": ORG, "name": "Org"}, "owner", "session", "s1")
    cloud = await service.add(p, Actor(kind="user", id="u1", org=ORG), {
        "name": "L", "provider": "linode", "credentials": {"apikey": "k"}})
    cid = cloud["id"]
    pollers = Pollers(service.settings, service, bus,  # type: ignore[arg-type]
                      clock=clock, wait=clock.wait, rng=Rng())

    ok = await pollers.poll_now(ORG, cid)
    assert (ok["state"], ok["failures"], ok["counts"]["machine"]["new"]) == ("ok", 0, 1)

    Provider.fail = CredentialsRefused("linode refused the credentials (apikey): Invalid Token",
                                       "apikey", provider="linode", status=401)
    first = await pollers.poll_now(ORG, cid)
    assert (first["state"], first["failures"], first["error_code"]) == ("error", 1, "provider_auth")
    assert first["error_field"] == "credentials.apikey"
    assert "Invalid Token" in first["last_error"]
    assert service.status(ORG, cid) == first  # stored: what GET /clouds/{id} shows
    assert service.get(p, cid)["status"]["error_field"] == "credentials.apikey"

    Provider.fail = ProviderUnavailable("cannot reach linode: connection refused")
    second = await pollers.poll_now(ORG, cid)
    assert (second["failures"], second["error_code"], second["error_field"]) == (
        2, "provider_unavailable", "")  # no stale field from the earlier reason
    assert "connection refused" in second["last_error"]

    [failed] = audited(bus, "cloud.poll_failed")  # the change into failure, not each retry
    assert failed["outcome"] == "failed" and failed["target"]["id"] == cid
    assert failed["details"]["field"] == "credentials.apikey"
    assert "Invalid Token" in failed["details"]["error"]
    assert audited(bus, "cloud.poll_recovered") == []

    Provider.fail = None
    back = await pollers.poll_now(ORG, cid)
    assert (back["state"], back["failures"], back["last_error"]) == ("ok", 0, "")
    assert "error_field" not in back and "error_code" not in back
    assert len(audited(bus, "cloud.poll_recovered")) == 1
    assert len(audited(bus, "cloud.poll_failed")) == 1

    # every poll tells live watchers the cloud's state, and why it failed
    told = [e.data for e in bus.events if (e.type, e.kind, e.id) == ("changed", "cloud", cid)]
    assert [t["status"] for t in told] == ["ok", "error", "error", "ok"]
    assert told[1]["error_field"] == "credentials.apikey" and told[3]["last_error"] == ""


async def test_adding_a_cloud_whose_key_is_refused_is_a_4xx_naming_it(
        service: CloudService, bus: FakeBus) -> None:
    user = {"id": "u1", "email": "ops@example.com"}
    p = Principal(user, {"id": ORG, "name": "Org"}, "owner", "session", "s1")
    # a refusal from code that cannot tell which credential: the adapter's is named
    Provider.fail = ProviderAuthError("linode refused the credentials: Invalid Token",
                                      {"provider": "linode"})
    with pytest.raises(CredentialsRefused) as err:
        await service.add(p, Actor(kind="user", id="u1", org=ORG), {
            "name": "L", "provider": "linode", "credentials": {"apikey": "k"}})
    assert (err.value.status, err.value.code) == (422, "provider_auth")
    assert err.value.details["field"] == "credentials.apikey"
    [failed] = audited(bus, "cloud.add")
    assert failed["outcome"] == "failed" and failed["details"]["field"] == "credentials.apikey"
    assert failed["details"]["code"] == "provider_auth"
