"""The admin socket's operations calls, served by the running controller (RocksDB has one
writer: while it runs, backups and the checks of its store go through it):

    POST /admin/backup  {"dir": ABSOLUTE_PATH}            a backup into that directory
    GET  /admin/doctor                                     the checks, run in the controller
    POST /admin/init    {"email", "password", "org"}       the first admin, if no user yet
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from controller import keys
from controller.errors import Invalid


async def _body(request: web.Request) -> dict[str, Any]:
    body = await request.json()
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    return body


async def _backup(request: web.Request) -> web.Response:
    from controller.ops.backup import make_backup

    body = await _body(request)
    target = body.get("dir")
    if not isinstance(target, str) or not target:
        raise Invalid("dir: the backup directory (an absolute path) is required", field="dir")
    result = await asyncio.to_thread(make_backup, request.app[keys.SERVICES].store,
                                     request.app[keys.SETTINGS], target, True)
    return web.json_response(result, status=201)


async def _doctor(request: web.Request) -> web.Response:
    from controller.ops.doctor import run_online

    app = request.app
    pki = app[keys.PKI] if keys.PKI in app else None
    return web.json_response(await run_online(app[keys.SETTINGS], app[keys.SERVICES], pki,
                                              app[keys.INSTANCE]))


async def _init(request: web.Request) -> web.Response:
    from controller.ops.init import check_admin, ensure_admin

    body = await _body(request)
    email = check_admin(str(body.get("email", "")), str(body.get("password", "")))
    admin, made, note = await ensure_admin(request.app[keys.SERVICES], email,
                                           str(body["password"]), body.get("org") or None)
    app = request.app
    fingerprint = app[keys.PKI].ca_fingerprint if keys.PKI in app else ""
    return web.json_response({"admin": admin, "created": made, "note": note,
                              "ca_fingerprint": fingerprint})


def add_routes(admin: web.Application, main: web.Application) -> None:
    """Add the calls to the admin socket's app ``admin`` of the controller's app ``main``."""
    if keys.PKI in main:
        admin[keys.PKI] = main[keys.PKI]
    admin[keys.INSTANCE] = main[keys.INSTANCE]
    admin.router.add_post("/admin/backup", _backup)
    admin.router.add_get("/admin/doctor", _doctor)
    admin.router.add_post("/admin/init", _init)
