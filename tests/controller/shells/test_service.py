"""The shell service with a stand-in channel and client: tickets (once, in time, for their
user only), the relay (keystrokes, resizes, output, exit), the idle and duration limits,
the shutdown, failures to open, what is stored, recorded and audited."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.accounts.model import Principal
from controller.errors import Forbidden, Invalid, NotFound, ProviderAuthError, Unauthenticated
from controller.exec.model import SshTarget
from controller.exec.targets import Route
from controller.listing import parse_query
from controller.machines.model import MACHINE
from controller.services import Services, build_services
from controller.settings import Settings
from controller.shells.model import Gone, Input, Keys, Resize
from controller.shells.recording import parse
from controller.shells.service import ShellService
from controller.store import open_store
from controller.store.docs import dump

ORG = "org1"
USER = {"id": "u1", "email": "ann@example.com"}
P = Principal(USER, {"id": ORG, "name": "Acme"}, "owner", "token", "t1")
OTHER = Principal({"id": "u2", "email": "eve@example.com"}, {"id": "org2", "name": "Evil"},
                  "owner", "token", "t2")
SAME_ORG_OTHER_USER = dataclasses.replace(P, user={"id": "u3", "email": "bob@example.com"})


class FakeChannel:
    """A shell: echoes what is typed; ``exit N`` ends it with N."""

    def __init__(self) -> None:
        self.out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.typed = bytearray()
        self.sizes: list[tuple[int, int]] = []
        self.closed = False
        self._exit: int | None = None
        self._error = ""

    async def read(self) -> bytes | None:
        data = await self.out.get()
        if data is None:
            self.out.put_nowait(None)
        return data

    def write(self, data: bytes) -> None:
        self.typed += data
        if data.startswith(b"exit "):
            self._exit = int(data.split()[1])
            self.out.put_nowait(None)
        else:
            self.out.put_nowait(data)

    def resize(self, cols: int, rows: int) -> None:
        self.sizes.append((cols, rows))

    async def close(self) -> None:
        self.closed = True
        self.out.put_nowait(None)

    @property
    def exit_code(self) -> int | None:
        return self._exit

    @property
    def error(self) -> str:
        return self._error


class FakeClient:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Input] = asyncio.Queue()
        self.received = bytearray()
        self.controls: list[dict[str, Any]] = []
        self.closed = False

    async def receive(self) -> Input:
        return await self.inbox.get()

    async def send_output(self, data: bytes) -> None:
        self.received += data

    async def send_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)

    async def close(self) -> None:
        self.closed = True


@dataclasses.dataclass
class World:
    services: Services
    shells: ShellService
    channels: list[FakeChannel]


@contextlib.contextmanager
def _world(tmp_path: Path, **settings: Any) -> Iterator[World]:
    s = Settings(data_dir=str(tmp_path / "data"), **settings)
    (tmp_path / "data").mkdir()
    store = open_store(tmp_path / "data" / "store")
    services = build_services(s, store)
    store.put(f"machine/{ORG}/m1", dump(MACHINE, {"id": "m1", "name": "web-1", "cloud": "c1"}))
    channels: list[FakeChannel] = []

    async def opener(target: SshTarget, term: str, cols: int, rows: int, command: str) -> Any:
        if target.host == "refused":
            raise ProviderAuthError("the host refused the key")
        ch = FakeChannel()
        channels.append(ch)
        return ch

    shells = ShellService(s, store, services.writer, services.targets, services.agentlink,
                          services.accounts, ssh_opener=opener)
    _route_to(services, lambda m: Route(
        m, ssh=SshTarget(host=str(m.get("host") or "10.0.0.5"), user="root")))
    yield World(services, shells, channels)
    store.close()


def _route_to(services: Services, route: Callable[[dict[str, Any]], Route]) -> None:
    """Reach every machine as ``route`` says (no agents, keys or clouds needed)."""
    services.targets.route = lambda machine, ssh_only=False: route(machine)  # type: ignore[method-assign]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with _world(tmp_path) as w:
        yield w


def _ticket(location: str) -> str:
    return location.split("ticket=", 1)[1]


def _audit(w: World, action: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for _, raw in w.services.store.scan("audit/")
            if json.loads(raw).get("action") == action]


async def test_a_shell_relays_records_and_audits(world: World) -> None:
    opened = world.shells.open(P, P.actor("10.1.1.1", "rest"), "web-1", {"cols": 80, "rows": 24})
    assert opened["location"].startswith("ws://127.0.0.1:7080/api/v2/shells/" + opened["id"])
    adm = world.shells.admit(opened["id"], opened["ticket"], "10.2.2.2", None)
    client = FakeClient()
    run = asyncio.create_task(world.shells.run(adm, client))
    await client.inbox.put(Keys(b"h\xc3"))
    await client.inbox.put(Keys(b"\xa9 secret-password\r\n"))
    await client.inbox.put(Resize(100, 30))
    await client.inbox.put(Keys(b"exit 3\n"))
    await asyncio.wait_for(run, 5)
    assert client.controls[0]["type"] == "ready" and client.controls[-1] == {"type": "exit", "code": 3}
    assert client.closed and world.channels[0].closed and world.channels[0].sizes == [(100, 30)]
    doc = world.shells.get(P, opened["id"])
    assert doc["state"] == "closed" and doc["exit_code"] == 3 and doc["reason"] == "exit"
    assert doc["bytes_out"] == len(client.received) == len(b"h\xc3\xa9 secret-password\r\n")
    assert doc["bytes_in"] == len(client.received) + len(b"exit 3\n")
    assert doc["duration"] >= 0 and doc["started"] and doc["ended"] and doc["recorded"]
    assert doc["user"] == "ann@example.com" and doc["machine_name"] == "web-1"
    assert doc["via"] == "ssh" and doc["client_ip"] == "10.2.2.2"
    path, name = world.shells.recording(P, opened["id"])
    assert name.endswith(".cast") and "web-1" in name
    _, events = parse(path.read_text())
    assert "".join(d for _, c, d in events if c == "o").encode() == bytes(client.received)
    assert [d for _, c, d in events if c == "r"] == ["100x30"]
    assert doc["recording_bytes"] == path.stat().st_size
    assert [e["target"]["id"] for e in _audit(world, "shell.open")] == [opened["id"]]
    [close] = _audit(world, "shell.close")
    assert close["details"]["exit_code"] == 3 and close["actor"]["ip"] == "10.2.2.2"
    assert close["actor"]["email"] == "ann@example.com" and close["details"]["duration"] >= 0
    everything = b"".join(raw for _, raw in world.services.store.scan(""))
    assert b"exit 3" not in everything  # keystrokes are neither stored nor audited
    data, meta = world.shells.list(P, parse_query({}))
    assert [d["id"] for d in data] == [opened["id"]] and meta["total"] == 1


async def test_tickets_are_good_once_in_time_and_for_their_user(tmp_path: Path) -> None:
    with _world(tmp_path, shell_ticket_ttl=1) as w:
        o = w.shells.open(P, P.actor(), "m1", {})
        with pytest.raises(Unauthenticated, match="not valid"):
            w.shells.admit(o["id"], o["ticket"][:-2] + "xx", "1.1.1.1", None)
        with pytest.raises(Unauthenticated, match="required"):
            w.shells.admit(o["id"], "", "1.1.1.1", None)
        with pytest.raises(Forbidden, match="another user"):
            w.shells.admit(o["id"], o["ticket"], "1.1.1.1", SAME_ORG_OTHER_USER)
        assert w.shells.admit(o["id"], o["ticket"], "1.1.1.1", P).ticket.shell_id == o["id"]
        with pytest.raises(Unauthenticated, match="used already"):
            w.shells.admit(o["id"], o["ticket"], "1.1.1.1", None)
        late = w.shells.open(P, P.actor(), "m1", {})
        w.shells._tickets[late["id"]].expires = time.time() - 1
        with pytest.raises(Unauthenticated, match="expired"):
            w.shells.admit(late["id"], late["ticket"], "1.1.1.1", None)
        assert w.shells.get(P, late["id"])["state"] == "expired"
        with pytest.raises(Unauthenticated):  # another shell's ticket
            w.shells.admit(late["id"], o["ticket"], "1.1.1.1", None)
        refused = _audit(w, "auth.refused")
        assert {e["target"]["kind"] for e in refused} == {"shell_ticket"}
        assert {e["org"] for e in refused} == {ORG}
        assert o["ticket"] not in str(refused)


def test_other_organisations_and_unknown_machines_are_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        world.shells.open(OTHER, OTHER.actor(), "m1", {})
    with pytest.raises(NotFound):
        world.shells.open(P, P.actor(), "nope", {})
    o = world.shells.open(P, P.actor(), "m1", {})
    for call in (lambda: world.shells.get(OTHER, o["id"]),
                 lambda: world.shells.recording(OTHER, o["id"]),
                 lambda: world.shells.delete_recording(OTHER, OTHER.actor(), o["id"])):
        with pytest.raises(NotFound):
            call()
    assert world.shells.list(OTHER, parse_query({}))[0] == []


def test_unreachable_machines_and_wrong_logins_are_refused_in_words(world: World) -> None:
    _route_to(world.services, lambda m: Route(
        m, why="it has no agent and no SSH key is associated with it"))
    with pytest.raises(Invalid, match="no SSH key"):
        world.shells.open(P, P.actor(), "m1", {})
    _route_to(world.services, lambda m: Route(m, ssh=SshTarget(host="h", user="ubuntu")))
    with pytest.raises(Invalid, match="logs in as ubuntu"):
        world.shells.open(P, P.actor(), "m1", {"user": "root"})


async def test_a_failure_to_open_is_told_stored_and_audited(world: World) -> None:
    world.services.store.put(f"machine/{ORG}/m2", dump(MACHINE, {"id": "m2", "name": "x",
                                                                  "host": "refused"}))
    o = world.shells.open(P, P.actor(), "m2", {})
    client = FakeClient()
    await world.shells.run(world.shells.admit(o["id"], o["ticket"], "1.1.1.1", None), client)
    assert client.controls == [{"type": "error", "reason": "error",
                                "message": "the host refused the key"}]
    doc = world.shells.get(P, o["id"])
    assert doc["state"] == "failed" and doc["error"] == "the host refused the key"
    [close] = _audit(world, "shell.close")
    assert close["outcome"] == "failed"
    with pytest.raises(NotFound, match="not recorded"):
        world.shells.recording(P, o["id"])


async def test_an_idle_shell_is_closed_with_a_message(tmp_path: Path) -> None:
    with _world(tmp_path, shell_idle_timeout=1) as w:
        o = w.shells.open(P, P.actor(), "m1", {})
        client = FakeClient()
        t0 = time.monotonic()
        await asyncio.wait_for(w.shells.run(w.shells.admit(o["id"], o["ticket"], "", None),
                                            client), 5)
        assert 1 <= time.monotonic() - t0 < 3
        assert client.controls[-1]["reason"] == "idle"
        assert "shell_idle_timeout" in client.controls[-1]["message"]
        assert w.channels[0].closed
        doc = w.shells.get(P, o["id"])
        assert doc["state"] == "closed" and doc["reason"] == "idle" and doc["exit_code"] is None


async def test_the_longest_duration_ends_a_busy_shell(tmp_path: Path) -> None:
    with _world(tmp_path, shell_idle_timeout=60, shell_max_duration=1) as w:
        o = w.shells.open(P, P.actor(), "m1", {})
        client = FakeClient()

        async def busy(c: FakeClient) -> None:
            while True:
                await c.inbox.put(Keys(b"x"))
                await asyncio.sleep(0.1)

        typing = asyncio.create_task(busy(client))
        await asyncio.wait_for(w.shells.run(w.shells.admit(o["id"], o["ticket"], "", None),
                                            client), 5)
        typing.cancel()
        assert client.controls[-1]["reason"] == "max_duration"
        assert w.shells.get(P, o["id"])["reason"] == "max_duration"


async def test_shutdown_ends_live_shells_and_stores_their_end(world: World) -> None:
    o = world.shells.open(P, P.actor(), "m1", {})
    client = FakeClient()
    run = asyncio.create_task(world.shells.run(world.shells.admit(o["id"], o["ticket"], "", None),
                                               client))
    await asyncio.sleep(0.1)
    assert world.shells.get(P, o["id"])["state"] == "open"
    await world.shells.close_all()
    assert run.done()
    doc = world.shells.get(P, o["id"])
    assert doc["state"] == "closed" and doc["reason"] == "shutdown"
    assert client.controls[-1]["reason"] == "shutdown"


async def test_a_client_that_goes_away_closes_the_shell(world: World) -> None:
    o = world.shells.open(P, P.actor(), "m1", {})
    client = FakeClient()
    await client.inbox.put(Gone())
    await asyncio.wait_for(world.shells.run(
        world.shells.admit(o["id"], o["ticket"], "", None), client), 5)
    assert world.channels[0].closed
    assert world.shells.get(P, o["id"])["reason"] == "client"


async def test_recordings_can_be_deleted_and_are_limited(tmp_path: Path) -> None:
    with _world(tmp_path, shell_recording_max_bytes=600) as w:
        o = w.shells.open(P, P.actor(), "m1", {})
        client = FakeClient()
        for i in range(50):
            await client.inbox.put(Keys(f"output line {i}\r\n".encode()))
        await client.inbox.put(Keys(b"exit 0\n"))
        await asyncio.wait_for(w.shells.run(w.shells.admit(o["id"], o["ticket"], "", None),
                                            client), 5)
        doc = w.shells.get(P, o["id"])
        assert doc["recording_truncated"] and doc["recording_bytes"] <= 600
        path, _ = w.shells.recording(P, o["id"])
        parse(path.read_text())
        after = w.shells.delete_recording(P, P.actor(), o["id"])
        assert not after["recorded"] and after["recording_deleted"] and not path.exists()
        with pytest.raises(NotFound, match="deleted"):
            w.shells.recording(P, o["id"])
        assert _audit(w, "shell.recording.delete")


def test_shells_left_open_by_a_stopped_controller_are_failed_on_start(world: World) -> None:
    o = world.shells.open(P, P.actor(), "m1", {})
    raw = world.services.store.get(f"shell/{ORG}/{o['id']}")
    assert raw is not None
    world.services.store.put(f"shell/{ORG}/{o['id']}", raw.replace(b'"pending"', b'"open"'))
    pending = world.shells.open(P, P.actor(), "m1", {})
    assert world.shells.sweep_interrupted() == 1
    assert world.shells.get(P, o["id"])["state"] == "failed"
    assert world.shells.get(P, pending["id"])["state"] == "expired"
