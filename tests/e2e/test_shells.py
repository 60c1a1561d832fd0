"""Interactive shells through the REST API and the WebSocket, as a browser would use them
(aiohttp's client standing in for xterm.js): one machine reached over SSH (an "other
server" on a real sshd) and one with a real agent, each in its own network namespace, one
real controller. Open, type, resize, exit; the session's record, the recording (its output
events are the bytes the client got), the audit log; tickets that are reused, late or for
another shell; other organisations, unknown and unreachable machines; a key the host
refuses; the idle limit.

The namespaces share this machine's files and processes: what runs there runs here."""

from __future__ import annotations

import asyncio
import json
import random
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest

from controller.shells.recording import parse
from tests.support import sshd as sshd_support
from tests.support.agents import AgentProc, join_token, wait_for
from tests.support.clouds import audit, poll
from tests.support.controller import ADMIN_EMAIL, ADMIN_PASSWORD, Controller, Http, free_port
from tests.support.netns import Lab

why = sshd_support.available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(why is not None, reason=why or "")]

MALLORY = ("mallory@evil.example.com", "evil password 123")


@dataclass
class World:
    c: Controller
    h: Http
    tmp: Path
    sshd: sshd_support.Sshd
    key: str
    agent: AgentProc
    machines: dict[str, dict[str, Any]]   # "ssh" and "agent"


def _machines(h: Http) -> dict[str, dict[str, Any]]:
    r = h.get("/api/v2/machines?limit=1000")
    assert r.status == 200, r.body
    return {m["id"]: m for m in r.body["data"]}


def add_other_server(h: Http, address: str, key: str, alias: str) -> dict[str, Any]:
    r = h.post("/api/v2/clouds", {"name": f"Rack {alias}", "provider": "other", "credentials": {
        "hosts": [{"host": address, "alias": alias, "key": key}]}})
    assert r.status == 201, r.body
    poll(h, r.body["data"]["id"])
    [m] = [m for m in _machines(h).values() if m["name"] == alias]
    return m


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("shells")
    key = asyncssh.generate_private_key("ssh-ed25519")
    private = key.export_private_key().decode()
    with Lab(subnet=random.randint(150, 199)) as lab:
        ssh_host, agent_host = lab.add_host(), lab.add_host()
        port = free_port()
        c = Controller(tmp / "ctl", {"OVERCAST_HTTP": f"{lab.gateway}:{port}",
                                     "OVERCAST_AGENTS": f"{lab.gateway}:{free_port()}",
                                     "OVERCAST_AGENT_GRACE": "5"},
                       url=f"https://{lab.gateway}:{port}")
        c.http_port = port
        c.adduser(ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Shells")
        c.start()
        sshd = sshd_support.Sshd(ssh_host, tmp / "sshd", hostname="ocshell-ssh")
        sshd.authorize(key.export_public_key().decode())
        agent = AgentProc(c, tmp / "agent", host=agent_host, hostname="ocshell-agent",
                          interval=5.0)
        try:
            with sshd:
                h = c.session()
                sm = add_other_server(h, ssh_host.address, private, "sshbox")
                e = agent.enrol(join_token(h)["token"])
                assert e.returncode == 0, e.stderr
                agent.start()
                aid = agent.agent_id
                wait_for(lambda: _machines(h).get(aid, {}).get("state") == "running", 30,
                         "the agent's machine running")
                yield World(c, h, tmp, sshd, private, agent, {"ssh": sm, "agent": _machines(h)[aid]})
        finally:
            agent.stop()
            if c.proc is not None and c.proc.poll() is None:
                c.stop()


# ---- a terminal client ----------------------------------------------------------------------

@dataclass
class Term:
    """One shell's WebSocket, read as a terminal would: output bytes, and control messages."""

    ws: aiohttp.ClientWebSocketResponse
    out: bytearray = field(default_factory=bytearray)
    controls: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    async def _next(self, timeout: float) -> None:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            self.out += msg.data
        elif msg.type == aiohttp.WSMsgType.TEXT:
            self.controls.append(json.loads(msg.data))
        else:
            self.closed = True

    async def expect(self, pattern: bytes, timeout: float = 20) -> re.Match[bytes]:
        start = len(self.out)
        deadline = time.monotonic() + timeout
        while (m := re.compile(pattern).search(self.out, start)) is None:
            assert not self.closed, f"closed before {pattern!r}: {bytes(self.out)!r} {self.controls}"
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {bytes(self.out[start:])!r}"
            try:
                await self._next(left)
            except TimeoutError:
                continue
        return m

    async def control(self, type_: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not any(c["type"] == type_ for c in self.controls):
            assert not self.closed, f"closed without {type_!r}: {self.controls}"
            left = deadline - time.monotonic()
            assert left > 0, f"no {type_!r} message: {self.controls}"
            try:
                await self._next(left)
            except TimeoutError:
                continue
        return next(c for c in self.controls if c["type"] == type_)

    async def until_closed(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.closed:
            await self._next(max(0.1, deadline - time.monotonic()))


def ask(h: Http, machine: str, **body: Any) -> dict[str, Any]:
    r = h.post(f"/api/v2/machines/{machine}/actions/ssh", body)
    assert r.status == 201, r.body
    data: dict[str, Any] = r.body["data"]
    return data


async def connect(c: Controller, location: str, **kw: Any) -> tuple[aiohttp.ClientSession, Term]:
    session = aiohttp.ClientSession()
    ctx: ssl.SSLContext | bool = c.ssl_context() or True
    try:
        ws = await session.ws_connect(location, ssl=ctx, **kw)
    except BaseException:
        await session.close()
        raise
    return session, Term(ws)


async def refused(c: Controller, location: str, **kw: Any) -> int:
    """The HTTP status a connection attempt is refused with (it must be refused)."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(location, ssl=c.ssl_context() or True, **kw)
    return info.value.status


# ---- the tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("via", ["ssh", "agent"])
async def test_open_type_resize_exit_then_the_record_and_recording(world: World, via: str) -> None:
    m = world.machines[via]
    opened = await asyncio.to_thread(ask, world.h, m["id"], cols=80, rows=24)
    assert opened["via"] == via and opened["machine"] == m["id"]
    assert opened["location"].startswith(world.c.url.replace("https", "wss") + "/api/v2/shells/")
    session, term = await connect(world.c, opened["location"])
    try:
        ready = await term.control("ready")
        assert ready["via"] == via and ready["id"] == opened["id"]
        await term.ws.send_str("echo hi-$((40+2))\r")  # typed text, as xterm.js sends it
        await term.expect(rb"hi-42\r\n")
        await term.ws.send_str(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
        await term.ws.send_bytes(b"stty size\r")
        await term.expect(rb"30 100\r\n")
        # a password typed where the terminal does not echo is in no output and no recording
        await term.ws.send_bytes(b"stty -echo; read pw; stty echo; echo len-${#pw}\r")
        await asyncio.sleep(0.3)
        await term.ws.send_bytes(b"hunter2-secret\r")
        await term.expect(rb"len-14\r\n")
        # while it is open, the session shows as such
        live = (await asyncio.to_thread(world.h.get, f"/api/v2/shells/{opened['id']}")).body["data"]
        assert live["state"] == "open" and live["bytes_out"] > 0
        await term.ws.send_bytes(b"exit 3\r")
        assert (await term.control("exit")) == {"type": "exit", "code": 3}
        await term.until_closed()
        # the ticket was good once
        assert await refused(world.c, opened["location"]) == 401
    finally:
        await session.close()
    got = bytes(term.out)

    doc = (await asyncio.to_thread(world.h.get, f"/api/v2/shells/{opened['id']}")).body["data"]
    assert doc["state"] == "closed" and doc["exit_code"] == 3 and doc["reason"] == "exit"
    assert doc["via"] == via and doc["machine"] == m["id"] and doc["user"] == ADMIN_EMAIL
    assert doc["bytes_out"] == len(got) and doc["bytes_in"] > len("stty size\r")
    assert doc["duration"] > 0 and doc["started"] and doc["ended"] and doc["recorded"]
    listed = (await asyncio.to_thread(world.h.get, "/api/v2/shells")).body
    assert listed["data"][0]["id"] == opened["id"]  # newest first

    r = await asyncio.to_thread(world.h.get, f"/api/v2/shells/{opened['id']}/recording")
    assert r.status == 200 and r.headers["Content-Type"] == "application/x-asciicast"
    assert "attachment" in r.headers["Content-Disposition"]
    header, events = parse(r.raw.decode())
    assert header["version"] == 2 and (header["width"], header["height"]) == (80, 24)
    assert "".join(d for _, code, d in events if code == "o").encode() == got
    assert [d for _, code, d in events if code == "r"] == ["100x30"]
    assert b"hunter2" not in got and b"hunter2" not in r.raw  # typed input is never recorded

    for action in ("shell.open", "shell.connect", "shell.close"):
        assert await asyncio.to_thread(audit, world.h, action, opened["id"]), action
    [close] = await asyncio.to_thread(audit, world.h, "shell.close", opened["id"])
    assert close["details"]["exit_code"] == 3 and close["details"]["duration"] > 0
    assert close["details"]["bytes_out"] == len(got) and close["actor"]["email"] == ADMIN_EMAIL


async def test_a_late_or_foreign_ticket_is_refused(world: World) -> None:
    a = await asyncio.to_thread(ask, world.h, world.machines["ssh"]["id"])
    b = await asyncio.to_thread(ask, world.h, world.machines["ssh"]["id"])
    ticket_b = b["location"].split("ticket=")[1]
    assert await refused(world.c, a["location"].split("?")[0] + f"?ticket={ticket_b}") == 401
    assert await refused(world.c, a["location"].split("?")[0]) == 401
    assert await refused(world.c, a["location"], origin="https://evil.example.com") == 403
    # none of these used a's ticket up
    session, term = await connect(world.c, a["location"])
    try:
        await term.control("ready")
    finally:
        await session.close()
    refusals = await asyncio.to_thread(audit, world.h, "auth.refused")
    assert a["location"].split("ticket=")[1] not in json.dumps(refusals)
    # nor do the access log's lines carry tickets (a refused one may still be good)
    log = world.c.log_path.read_text()
    assert "/ws?ticket=REDACTED" in log
    for t in (a["location"].split("ticket=")[1], ticket_b):
        assert t not in log


async def test_other_organisations_see_nothing(world: World) -> None:
    mine = await asyncio.to_thread(ask, world.h, world.machines["ssh"]["id"])
    await asyncio.to_thread(world.c.adduser, *MALLORY, "--org", "Evil")
    m = await asyncio.to_thread(world.c.session, *MALLORY)
    for machine in world.machines.values():
        r = m.post(f"/api/v2/machines/{machine['id']}/actions/ssh", {})
        assert r.status == 404 and r.body["error"]["message"] == "no such machine", r.body
    for path in (f"/api/v2/shells/{mine['id']}", f"/api/v2/shells/{mine['id']}/recording"):
        assert m.get(path).status == 404
    assert m.delete(f"/api/v2/shells/{mine['id']}/recording").status == 404
    assert m.get("/api/v2/shells").body["data"] == []
    # mallory cannot use the ticket she does not have, nor connect as herself with it
    token = await asyncio.to_thread(world.c.token, *MALLORY, name="mallory")
    assert await refused(world.c, mine["location"], headers={"Authorization": f"Bearer {token}"}) == 403


def test_unknown_and_unreachable_machines_are_refused_in_words(world: World) -> None:
    r = world.h.post("/api/v2/machines/no-such-machine/actions/ssh", {})
    assert r.status == 404 and r.body["error"]["message"] == "no such machine"
    # a machine whose agent never connected, and with no key associated
    silent = AgentProc(world.c, world.tmp / "silent", hostname="ocshell-silent")
    e = silent.enrol(join_token(world.h)["token"])
    assert e.returncode == 0, e.stderr
    r = world.h.post(f"/api/v2/machines/{silent.agent_id}/actions/ssh", {})
    assert r.status == 422, r.body
    assert "agent is not connected" in r.body["error"]["message"]
    assert "no SSH key" in r.body["error"]["message"]
    r = world.h.post(f"/api/v2/machines/{world.machines['ssh']['id']}/actions/ssh",
                     {"user": "someone-else"})
    assert r.status == 422 and r.body["error"]["details"]["field"] == "user"
    r = world.h.post(f"/api/v2/machines/{world.machines['ssh']['id']}/actions/ssh",
                     {"cols": 0, "surprise": 1})
    assert r.status == 422


async def test_a_key_the_host_refuses_fails_the_shell_in_words(world: World) -> None:
    keys = world.sshd.root / "authorized_keys"
    saved = keys.read_text()
    keys.write_text("")
    try:
        opened = await asyncio.to_thread(ask, world.h, world.machines["ssh"]["id"])
        session, term = await connect(world.c, opened["location"])
        try:
            err = await term.control("error")
            await term.until_closed()
        finally:
            await session.close()
    finally:
        keys.write_text(saved)
    assert err["reason"] == "error" and err["message"], err
    doc = (await asyncio.to_thread(world.h.get, f"/api/v2/shells/{opened['id']}")).body["data"]
    assert doc["state"] == "failed" and doc["error"] == err["message"]
    [close] = await asyncio.to_thread(audit, world.h, "shell.close", opened["id"])
    assert close["outcome"] == "failed"


async def test_idle_shells_close_and_tickets_expire(world: World, tmp_path: Path) -> None:
    """Its own controller, with a 2 s idle limit and 1 s tickets."""
    c = Controller(tmp_path, {"OVERCAST_SHELL_IDLE_TIMEOUT": "2", "OVERCAST_SHELL_TICKET_TTL": "1"})
    await asyncio.to_thread(c.adduser, ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Idle")
    await asyncio.to_thread(c.start)
    try:
        h = await asyncio.to_thread(c.session)
        m = await asyncio.to_thread(add_other_server, h, world.sshd.host.address, world.key, "idlebox")
        late = await asyncio.to_thread(ask, h, m["id"])
        await asyncio.sleep(1.5)
        assert await refused(c, late["location"]) == 401
        opened = await asyncio.to_thread(ask, h, m["id"])
        session, term = await connect(c, opened["location"])
        t0 = time.monotonic()
        try:
            await term.control("ready")
            err = await term.control("error", timeout=15)
            await term.until_closed()
        finally:
            await session.close()
        assert err["reason"] == "idle" and "shell_idle_timeout" in err["message"], err
        assert time.monotonic() - t0 < 10
        doc = h.get(f"/api/v2/shells/{opened['id']}").body["data"]
        assert doc["state"] == "closed" and doc["reason"] == "idle"
        assert h.get(f"/api/v2/shells/{late['id']}").body["data"]["state"] == "expired"
    finally:
        await asyncio.to_thread(c.stop)


async def test_a_stopping_controller_ends_its_shells_and_a_killed_one_is_cleaned_up(
        world: World, tmp_path: Path) -> None:
    c = Controller(tmp_path)
    await asyncio.to_thread(c.adduser, ADMIN_EMAIL, ADMIN_PASSWORD, "--admin", "--org", "Stop")
    await asyncio.to_thread(c.start)
    try:
        h = await asyncio.to_thread(c.session)
        m = await asyncio.to_thread(add_other_server, h, world.sshd.host.address, world.key, "stopbox")
        opened = await asyncio.to_thread(ask, h, m["id"])
        session, term = await connect(c, opened["location"])
        try:
            await term.control("ready")
            reading = asyncio.create_task(term.until_closed())  # as a browser reads all along
            await asyncio.to_thread(c.stop)  # SIGTERM: a clean stop
            await reading
            assert term.ws.close_code == 1001  # "going away"
        finally:
            await session.close()
        await asyncio.to_thread(c.start)
        h = await asyncio.to_thread(c.session)
        doc = h.get(f"/api/v2/shells/{opened['id']}").body["data"]
        assert doc["state"] == "closed" and doc["reason"] == "shutdown" and doc["ended"], doc
        [close] = audit(h, "shell.close", opened["id"])
        assert close["outcome"] == "success" and close["details"]["reason"] == "shutdown"

        opened = await asyncio.to_thread(ask, h, m["id"])
        session, term = await connect(c, opened["location"])
        try:
            await term.control("ready")
            await asyncio.to_thread(c.kill9)  # no chance to write anything
            await term.until_closed()
        finally:
            await session.close()
        await asyncio.to_thread(c.start)
        h = await asyncio.to_thread(c.session)
        doc = h.get(f"/api/v2/shells/{opened['id']}").body["data"]
        assert doc["state"] == "failed" and "controller stopped" in doc["error"], doc
        r = h.get(f"/api/v2/shells/{opened['id']}/recording")  # what was written before is kept
        assert r.status == 200 and parse(r.raw.decode())[0]["version"] == 2
    finally:
        await asyncio.to_thread(c.stop)
