"""The live event WebSocket (GET /api/v2/events) through a real controller and aiohttp's
client: who may connect, and that each organisation sees its own events only."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.support.controller import Controller, Http

OTHER_EMAIL = "carol@initech.example.com"
OTHER_PASSWORD = "initech password 1"

Events = list[dict[str, Any]]


@pytest.fixture(scope="module")
def other(controller: Controller) -> dict[str, Any]:
    """A second user in another organisation (Initech), made through the admin socket."""
    return controller.adduser(OTHER_EMAIL, OTHER_PASSWORD, "--org", "Initech")


def ws_url(c: Controller, query: str = "") -> str:
    return c.url.replace("http://", "ws://") + "/api/v2/events" + (f"?{query}" if query else "")


def cookie_header(h: Http) -> str:
    return "; ".join(f"{k}={v}" for k, v in h.cookies.items())


async def connect(session: aiohttp.ClientSession, c: Controller, query: str = "",
                  **headers: str) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await session.ws_connect(ws_url(c, query), headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=5))
    ready = await asyncio.wait_for(ws.receive_json(), 10)
    assert ready["type"] == "ready", ready
    return ws, ready


async def read_until(ws: aiohttp.ClientWebSocketResponse, until: Callable[[Events], bool],
                     timeout: float = 10) -> Events:
    got: Events = []

    async def reader() -> None:
        while not until(got):
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, f"the socket ended: {msg}"
            got.append(json.loads(msg.data))

    await asyncio.wait_for(reader(), timeout)
    return got


async def new_token(c: Controller, h: Http, name: str) -> str:
    r = await asyncio.to_thread(h.post, "/api/v2/auth/tokens", {"name": f"{name} {time.time()}"})
    assert r.status == 201, r.body
    return str(r.body["id"])


def is_event(type_: str, kind: str, id_: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == type_ and e["kind"] == kind and e["id"] == id_


def is_audit_of(action: str, target: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (e["type"] == "audit" and e["kind"] == "log"
                      and e["data"]["action"] == action and e["data"]["target"]["id"] == target)


# ---- who may connect ----------------------------------------------------------------------

async def test_bearer_token_connects_and_receives_own_events(controller: Controller) -> None:
    token = await asyncio.to_thread(controller.token, name="ws bearer")
    h = await asyncio.to_thread(controller.session)
    async with aiohttp.ClientSession() as s:
        ws, ready = await connect(s, controller, Authorization=f"Bearer {token}")
        assert ready["org"] and ready["kinds"] == []
        tid = await new_token(controller, h, "ws created")
        r = await asyncio.to_thread(h.delete, f"/api/v2/auth/tokens/{tid}")
        assert r.status == 200
        evs = await read_until(ws, lambda evs: any(map(is_audit_of("token.revoke", tid), evs)))
        created = next(filter(is_event("created", "token", tid), evs))
        assert set(created) == {"type", "kind", "id", "org", "time", "data"}
        assert created["org"] == ready["org"]
        assert abs(created["time"] - time.time()) < 60
        assert created["data"]["name"].startswith("ws created")
        changed = next(filter(is_event("changed", "token", tid), evs))
        assert changed["data"] == {"revoked": True}
        audit = next(filter(is_audit_of("token.create", tid), evs))
        assert audit["org"] == ready["org"]
        assert audit["data"]["outcome"] == "success"
        # the event order follows the order of the changes
        order = [i for i, e in enumerate(evs) if e["id"] == tid and e["type"] != "audit"]
        assert [evs[i]["type"] for i in order] == ["created", "changed"]
        await ws.close()


async def test_session_cookie_connects(controller: Controller) -> None:
    h = await asyncio.to_thread(controller.session)
    async with aiohttp.ClientSession() as s:
        # a browser on our own pages sends our Origin; a non-browser sends none
        for origin in ({"Origin": controller.url}, {}):
            ws, ready = await connect(s, controller, Cookie=cookie_header(h), **origin)
            tid = await new_token(controller, h, "ws cookie")
            await read_until(ws, lambda evs, tid=tid: any(map(is_event("created", "token", tid), evs)))
            await ws.close()


async def _handshake(c: Controller, headers: dict[str, str]) -> tuple[int, Any]:
    """A WebSocket upgrade request, answered without upgrading: (status, JSON body)."""
    hdrs = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **headers}
    async with aiohttp.ClientSession() as s, s.get(c.url + "/api/v2/events", headers=hdrs) as r:
        body = await r.json(content_type=None)
        return r.status, body


async def test_unauthenticated_is_401_json_before_upgrade(controller: Controller) -> None:
    status, body = await _handshake(controller, {})
    assert status == 401
    assert body["error"]["code"] == "unauthenticated"
    for bad in ({"Authorization": "Bearer oc_wrong"}, {"Cookie": "session.id=not-a-session"}):
        status, body = await _handshake(controller, bad)
        assert status == 401, bad
        assert body["error"]["code"] == "unauthenticated"
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as ei:
            await s.ws_connect(ws_url(controller))
        assert ei.value.status == 401


async def test_cookie_with_foreign_origin_is_403(controller: Controller) -> None:
    h = await asyncio.to_thread(controller.session)
    for origin in ("http://evil.example.com", f"https://127.0.0.1:{controller.http_port}",
                   f"http://127.0.0.1:{controller.http_port + 1}", "null"):
        status, body = await _handshake(controller, {"Cookie": cookie_header(h), "Origin": origin})
        assert status == 403, origin
        assert body["error"]["code"] == "forbidden"
        assert origin in body["error"]["message"]


async def test_bearer_with_foreign_origin_is_allowed(controller: Controller) -> None:
    # a token is not sent by browsers on their own: no cross-site hijacking to fear
    token = await asyncio.to_thread(controller.token, name="ws bearer origin")
    async with aiohttp.ClientSession() as s:
        ws, _ = await connect(s, controller, Authorization=f"Bearer {token}",
                              Origin="http://elsewhere.example.com")
        await ws.close()


# ---- organisations and filters ------------------------------------------------------------

async def test_other_orgs_events_do_not_arrive(controller: Controller, other: dict[str, Any]) -> None:
    acme = await asyncio.to_thread(controller.session)
    initech = await asyncio.to_thread(controller.session, OTHER_EMAIL, OTHER_PASSWORD)
    async with aiohttp.ClientSession() as s:
        ws_acme, ready_acme = await connect(s, controller, Cookie=cookie_header(acme))
        # allorgs is for platform admins only: Carol asking for it still gets Initech's
        ws_ini, ready_ini = await connect(s, controller, "allorgs=true", Cookie=cookie_header(initech))
        assert ready_ini["org"] == other["org"]["id"] != ready_acme["org"]

        ini_tid = await new_token(controller, initech, "initech")
        acme_tid = await new_token(controller, acme, "acme")
        # each sees its own token and its audit entry ...
        acme_evs = await read_until(ws_acme, lambda evs: any(map(is_audit_of("token.create", acme_tid), evs)))
        ini_evs = await read_until(ws_ini, lambda evs: any(map(is_audit_of("token.create", ini_tid), evs)))
        # ... then a marker in each org, so anything leaked before it has arrived too
        acme_mark = await new_token(controller, acme, "acme marker")
        ini_mark = await new_token(controller, initech, "initech marker")
        acme_evs += await read_until(ws_acme, lambda evs: any(e["id"] == acme_mark for e in evs))
        ini_evs += await read_until(ws_ini, lambda evs: any(e["id"] == ini_mark for e in evs))

        assert not [e for e in acme_evs if e["org"] != ready_acme["org"]], "Acme saw another org"
        assert not [e for e in ini_evs if e["org"] != ready_ini["org"]], "Initech saw another org"
        assert not any(ini_tid in json.dumps(e) for e in acme_evs)
        assert not any(acme_tid in json.dumps(e) for e in ini_evs)
        await ws_acme.close()
        await ws_ini.close()


async def test_kinds_filter(controller: Controller, other: dict[str, Any]) -> None:
    h = await asyncio.to_thread(controller.session)
    async with aiohttp.ClientSession() as s:
        ws_tok, ready = await connect(s, controller, "kinds=token", Cookie=cookie_header(h))
        assert ready["kinds"] == ["token"]
        ws_log, _ = await connect(s, controller, "kinds=log", Cookie=cookie_header(h))
        ws_mem, _ = await connect(s, controller, "kinds=member,token", Cookie=cookie_header(h))

        # a member added and removed (created/deleted of kind member), a token made and revoked
        org = ready["org"]
        r = await asyncio.to_thread(h.post, f"/api/v2/orgs/{org}/members",
                                    {"email": OTHER_EMAIL, "role": "member"})
        assert r.status == 201, r.body
        uid = r.body["id"]
        r = await asyncio.to_thread(h.delete, f"/api/v2/orgs/{org}/members/{uid}")
        assert r.status == 204, r.body
        tid = await new_token(controller, h, "kinds")
        r = await asyncio.to_thread(h.delete, f"/api/v2/auth/tokens/{tid}")
        assert r.status == 200

        tok = await read_until(ws_tok, lambda evs: any(map(is_event("changed", "token", tid), evs)))
        assert {e["kind"] for e in tok} == {"token"}, tok
        log = await read_until(ws_log, lambda evs: any(map(is_audit_of("token.revoke", tid), evs)))
        assert {(e["type"], e["kind"]) for e in log} == {("audit", "log")}
        assert [e["data"]["action"] for e in log][-4:] == [
            "member.add", "member.remove", "token.create", "token.revoke"]
        mem = await read_until(ws_mem, lambda evs: any(map(is_event("changed", "token", tid), evs)))
        assert [(e["type"], e["kind"]) for e in mem][-4:] == [
            ("created", "member"), ("deleted", "member"), ("created", "token"), ("changed", "token")]
        assert next(filter(is_event("deleted", "member", uid), mem))["data"]["email"] == OTHER_EMAIL
        for ws in (ws_tok, ws_log, ws_mem):
            await ws.close()


async def test_revoked_token_cannot_connect(controller: Controller) -> None:
    h = await asyncio.to_thread(controller.session)
    r = await asyncio.to_thread(h.post, "/api/v2/auth/tokens", {"name": f"ws revoke {time.time()}"})
    secret, tid = r.body["token"], r.body["id"]
    assert (await asyncio.to_thread(h.delete, f"/api/v2/auth/tokens/{tid}")).status == 200
    status, body = await _handshake(controller, {"Authorization": f"Bearer {secret}"})
    assert status == 401
    assert "revoked" in body["error"]["message"]


async def read_to_end(ws: aiohttp.ClientWebSocketResponse, stop_at: str) -> tuple[Events, Any]:
    """Events until the server closes the socket (or, if it wrongly goes on, the event
    ``stop_at``), and the close code."""
    got: Events = []
    code = None
    while not any(e["id"] == stop_at for e in got):
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            assert msg.type == aiohttp.WSMsgType.CLOSE, msg
            code = msg.data
            break
        got.append(json.loads(msg.data))
    return got, code


async def test_stream_ends_when_its_token_is_revoked(controller: Controller) -> None:
    """A leaked token revoked by its owner stops receiving events at once."""
    h = await asyncio.to_thread(controller.session)
    r = await asyncio.to_thread(h.post, "/api/v2/auth/tokens", {"name": f"ws leaked {time.time()}"})
    secret, tid = r.body["token"], r.body["id"]
    async with aiohttp.ClientSession() as s:
        ws, _ = await connect(s, controller, Authorization=f"Bearer {secret}")
        watcher, _ = await connect(s, controller, Cookie=cookie_header(h))
        assert (await asyncio.to_thread(h.delete, f"/api/v2/auth/tokens/{tid}")).status == 200
        after = await new_token(controller, h, "made after the revocation")
        await read_until(watcher, lambda evs: any(e["id"] == after for e in evs))
        got, code = await read_to_end(ws, after)
        assert not any(e["id"] == after for e in got), "events reached a revoked token"
        assert code == 1008  # policy violation: reconnecting with the same token will not do
        await watcher.close()


async def test_stream_ends_when_its_session_ends(controller: Controller) -> None:
    h = await asyncio.to_thread(controller.session)
    other = await asyncio.to_thread(controller.session)
    async with aiohttp.ClientSession() as s:
        ws, _ = await connect(s, controller, Cookie=cookie_header(h))
        r = await asyncio.to_thread(h.delete, "/api/v2/auth/sessions")  # sign out
        assert r.status == 204
        after = await new_token(controller, other, "made after sign-out")
        got, code = await read_to_end(ws, after)
        assert not any(e["id"] == after for e in got), "events reached a signed-out session"
        assert code == 1008
