"""REST and WebSocket routes of interactive shells: ask for one on a machine (Mist v2's
``POST /api/v2/machines/{machine}/actions/ssh``), connect to it, list past sessions and
download or delete their recordings.

The WebSocket carries the terminal: binary frames (and text frames that are not a control
message) are keystrokes; a text ``{"type": "resize", "cols": N, "rows": M}`` resizes. The
server sends the output as binary frames, and text frames ``{"type": "ready"}`` once the
shell is open and ``{"type": "exit", "code": N}`` or ``{"type": "error", "message": ...}``
before it closes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web

from controller import keys
from controller.errors import BadRequest, Unauthenticated
from controller.http.api import LIST_PARAMS, Ctx, Reply, RouteTable, envelope, one
from controller.http.schema import integer, obj, string
from controller.listing import project
from controller.shells.model import (
    CLIENT,
    MAX_COLS,
    MAX_ROWS,
    SHUTDOWN,
    Gone,
    Input,
    Keys,
    parse_control,
)
from controller.shells.recording import CONTENT_TYPE

log = logging.getLogger(__name__)
routes = RouteTable("shells")

OPEN_SHELL = obj((), cols=integer(1, MAX_COLS), rows=integer(1, MAX_ROWS),
                 term=string(1, 64, pattern=r"[A-Za-z0-9._+-]+"),
                 user=string(0, 32, pattern=r"([A-Za-z0-9_][A-Za-z0-9_.-]*)?"),
                 command=string(0, 4096))
MAX_FRAME = 1 << 20   # a paste into the terminal is one frame


@routes.route("POST", "/api/v2/machines/{machine}/actions/ssh", op="open_shell", body=OPEN_SHELL,
              summary="Ask for an interactive shell on a machine: answers with its WebSocket "
                      "location and a one-use ticket (Mist answers 302 to its shell page)")
async def open_shell(ctx: Ctx) -> Any:
    data = ctx.services.shells.open(ctx.principal, ctx.actor, ctx.match("machine"), ctx.body or {})
    return Reply({"data": data}, status=201)


@routes.route("GET", "/api/v2/shells/{shell}/ws", op="connect_shell", auth=False, websocket=True,
              same_origin=True, params=("ticket",),
              summary="WebSocket of a shell (the ticket is the credential, good once)")
async def connect_shell(ctx: Ctx) -> Any:
    ticket = ctx.param("ticket")
    if not ticket:
        raise Unauthenticated("a ticket is required: POST /api/v2/machines/{machine}/actions/ssh "
                              "answers with this shell's location and ticket")
    ws = web.WebSocketResponse(heartbeat=25, max_msg_size=MAX_FRAME)
    if not ws.can_prepare(ctx.request).ok:  # checked first: a plain GET must not use the ticket up
        raise BadRequest("this is a WebSocket endpoint: connect with a WebSocket client")
    shells = ctx.services.shells
    admission = shells.admit(ctx.match("shell"), ticket, ctx.ip, ctx.principal_)
    sockets = ctx.request.app[keys.WEBSOCKETS]  # closed on shutdown
    sockets.add(ws)
    try:
        await ws.prepare(ctx.request)
        await shells.run(admission, _WsClient(ws))
    finally:
        sockets.discard(ws)
    return ws


class _WsClient:
    """A shell's WebSocket as :class:`controller.shells.model.ShellClient`."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._gone: Gone | None = None

    async def receive(self) -> Input:
        while self._gone is None:
            msg = await self.ws.receive()
            if msg.type == WSMsgType.BINARY:
                return Keys(msg.data)
            if msg.type == WSMsgType.TEXT:
                control, resize = parse_control(msg.data)
                if not control:
                    return Keys(msg.data.encode())
                if resize is not None:
                    return resize
            elif msg.type == WSMsgType.CLOSING:
                # only our side closes a socket while it is read: the controller's shutdown
                self._gone = Gone(SHUTDOWN)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                self._gone = Gone(CLIENT)
        return self._gone

    async def send_output(self, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionError("the client went away")
        try:
            await self.ws.send_bytes(data)
        except Exception as exc:  # aiohttp raises several kinds for a transport that closed
            raise ConnectionError(str(exc)) from exc

    async def send_control(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        try:
            await self.ws.send_str(json.dumps(message))
        except Exception:  # noqa: BLE001, S110 - the client is gone: nobody to tell
            pass

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:  # noqa: BLE001, S110 - closing a socket that broke
            pass


@routes.route("GET", "/api/v2/shells", op="list_shells", params=LIST_PARAMS,
              summary="List the organisation's shell sessions, newest first")
async def list_shells(ctx: Ctx) -> Any:
    return envelope(*await asyncio.to_thread(ctx.services.shells.list, ctx.principal, ctx.query()))


@routes.route("GET", "/api/v2/shells/{shell}", op="get_shell", params=("only",),
              summary="Show a shell session: who, which machine, when, how long, how it ended")
async def get_shell(ctx: Ctx) -> Any:
    return one(project(ctx.services.shells.get(ctx.principal, ctx.match("shell")),
                       ctx.query().only))


@routes.route("GET", "/api/v2/shells/{shell}/recording", op="get_shell_recording",
              summary="Download a shell's recording (asciicast v2)")
async def get_shell_recording(ctx: Ctx) -> Any:
    path, name = ctx.services.shells.recording(ctx.principal, ctx.match("shell"))
    return web.FileResponse(path, headers={
        "Content-Type": CONTENT_TYPE, "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


@routes.route("DELETE", "/api/v2/shells/{shell}/recording", op="delete_shell_recording",
              summary="Delete a shell's recording (the session's record stays)")
async def delete_shell_recording(ctx: Ctx) -> Any:
    return one(ctx.services.shells.delete_recording(ctx.principal, ctx.actor, ctx.match("shell")))


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """On start, shells a stopped controller left open are marked failed; on the way out,
    any shell still open is ended (the shutdown closes their sockets first: see
    ``_WsClient.receive``) and its end stored."""
    shells = app[keys.SERVICES].shells
    n = await asyncio.to_thread(shells.sweep_interrupted)
    if n:
        log.warning("%d shell(s) were open when the controller last stopped: marked failed", n)
    yield
    await shells.close_all()
