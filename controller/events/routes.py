"""GET /api/v2/events: a WebSocket streaming the caller's organisation's live events."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from controller import keys
from controller.errors import Forbidden, Unauthenticated
from controller.http.api import SESSION_COOKIE, Ctx, RouteTable, bearer, same_origin

routes = RouteTable("events")


def _check_origin(ctx: Ctx) -> None:
    """Cookie-authenticated WebSockets must come from our own pages (cross-site WebSocket
    hijacking): a browser always sends Origin, and it must be the external URL's."""
    if bearer(ctx.request) is not None or SESSION_COOKIE not in ctx.request.cookies:
        return
    origin = ctx.request.headers.get("Origin")
    if origin is None:
        return  # not a browser
    if not same_origin(origin, ctx.services.settings.public_url):
        raise Forbidden(f"WebSocket from origin {origin[:200]} refused")


def _credential_check(ctx: Ctx) -> Callable[[], bool]:
    """Whether the token or session the socket was opened with still holds; checked before
    each event, so revoking a token or signing out ends the streams it opened."""
    accounts = ctx.services.accounts
    token = bearer(ctx.request)
    cookie = ctx.request.cookies.get(SESSION_COOKIE, "")

    def check() -> bool:
        try:
            if token is not None:
                accounts.resolve_token(token)
            else:
                accounts.resolve_session(cookie)
        except Unauthenticated:
            return False
        return True

    return check


@routes.route("GET", "/api/v2/events", op="watch_events", params=("kinds",), websocket=True,
              summary="WebSocket of live events (created, changed, deleted, progress, audit)")
async def watch_events(ctx: Ctx) -> Any:
    _check_origin(ctx)
    p = ctx.principal
    kinds = [k for k in ctx.param("kinds").split(",") if k]
    allorgs = ctx.flag("allorgs") and p.is_admin
    if not allorgs and not p.org_id:
        # the events of no organisation (failed logins, refused tokens) are the platform's
        raise Forbidden("you belong to no organisation: there are no events to watch "
                        "(join or create one, then sign in again)")
    ws = web.WebSocketResponse(heartbeat=25, max_msg_size=64 * 1024)
    await ws.prepare(ctx.request)
    ctx.request.app[keys.WEBSOCKETS].add(ws)
    sub = ctx.services.bus.subscribe(None if allorgs else p.org_id, kinds)
    await ws.send_str(json.dumps({"type": "ready", "org": p.org_id, "kinds": kinds}))

    async def drain_client() -> None:
        async for msg in ws:  # we read only to notice close frames
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    import asyncio

    still_valid = _credential_check(ctx)

    async def send_events() -> None:
        async for ev in sub:
            if ws.closed:
                break
            if not still_valid():  # revoked token, ended session: nothing more reaches it
                await ws.close(code=WSCloseCode.POLICY_VIOLATION,
                               message=b"the credential was revoked or has expired")
                break
            await ws.send_str(json.dumps(ev.to_dict(), default=str))
            if ev.type == "overflow":
                break

    # whichever ends first ends the connection: a client that closes (or a server shutdown
    # closing it) must not leave this handler waiting for an event that may never come
    reader = asyncio.create_task(drain_client())
    sender = asyncio.create_task(send_events())
    try:
        await asyncio.wait((reader, sender), return_when=asyncio.FIRST_COMPLETED)
        if sender.done():
            sender.result()  # a failed send raises here, as it did inline
    finally:
        sub.close()
        sender.cancel()
        ctx.request.app[keys.WEBSOCKETS].discard(ws)
        reader.cancel()
        await ws.close()
    return ws
