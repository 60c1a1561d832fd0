"""REST routes of the script library (Mist v2: /api/v2/scripts; ``refresh`` is Overcast's).
Running a script (``POST /api/v2/scripts/{script}``) is declared by :mod:`controller.exec`."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from controller.http.api import LIST_PARAMS, Ctx, Reply, RouteTable, envelope, one
from controller.http.schema import obj, string
from controller.listing import project
from controller.scripts.model import EXEC_TYPES, LOCATION_TYPES

routes = RouteTable("scripts")

TAGS: dict[str, Any] = {"type": "object", "description": "key -> value"}
# script: the inline text (at most 512 KiB as UTF-8, checked by the service: 413 over it), an
# http(s) URL, or a repository URL[#ref]; the body as a whole is bounded by max_body_bytes
ADD_SCRIPT = obj(("name", "exec_type", "location_type", "script"),
                 name=string(1, 200), description=string(0, 2000),
                 exec_type=string(1, 20, enum=list(EXEC_TYPES)),
                 location_type=string(1, 20, enum=list(LOCATION_TYPES)),
                 script=string(1, 4 * 1024 * 1024), entrypoint=string(0, 1000), tags=TAGS)
EDIT_SCRIPT = obj((), name=string(1, 200), description=string(0, 2000))
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@routes.route("GET", "/api/v2/scripts", op="list_scripts", summary="List scripts", params=LIST_PARAMS)
async def list_scripts(ctx: Ctx) -> Any:
    return envelope(*await asyncio.to_thread(ctx.services.scripts.list_scripts, ctx.principal, ctx.query()))


@routes.route("POST", "/api/v2/scripts", op="add_script", body=ADD_SCRIPT,
              summary="Add a script: inline text, an http(s) URL (a .tar.gz or one script file) "
                      "or a git repository (URL#ref); its content is fetched once and stored")
async def add_script(ctx: Ctx) -> Any:
    doc = await ctx.services.scripts.add(ctx.principal, ctx.actor, ctx.body)
    return Reply({"data": doc, "id": doc["id"]}, status=201)


@routes.route("GET", "/api/v2/scripts/{script}", op="get_script", params=("only", "deref"),
              summary="Show a script (id or name); its content is at /file")
async def get_script(ctx: Ctx) -> Any:
    return one(project(ctx.services.scripts.get(ctx.principal, ctx.match("script")), ctx.query().only))


@routes.route("PUT", "/api/v2/scripts/{script}", op="edit_script", body=EDIT_SCRIPT,
              params=("name", "description"),
              summary="Rename a script or change its description (query parameters or JSON)")
async def edit_script(ctx: Ctx) -> Any:
    body = ctx.body or {}
    name = body.get("name", ctx.param("name") or None)
    description = body.get("description", ctx.request.query.get("description"))
    return one(ctx.services.scripts.edit(ctx.principal, ctx.actor, ctx.match("script"), name, description))


@routes.route("DELETE", "/api/v2/scripts/{script}", op="delete_script", summary="Delete a script")
async def delete_script(ctx: Ctx) -> Any:
    ctx.services.scripts.delete(ctx.principal, ctx.actor, ctx.match("script"))
    return Reply(status=204)


@routes.route("POST", "/api/v2/scripts/{script}/refresh", op="refresh_script",
              summary="Fetch a URL or repository script again and store what it is now")
async def refresh_script(ctx: Ctx) -> Any:
    doc, changed = await ctx.services.scripts.refresh(ctx.principal, ctx.actor, ctx.match("script"))
    return {"data": doc, "changed": changed}


@routes.route("GET", "/api/v2/scripts/{script}/file", op="download_script",
              summary="Download a script: its text, or its .tar.gz archive")
async def download_script(ctx: Ctx) -> Any:
    view, content = await asyncio.to_thread(ctx.services.scripts.payload, ctx.principal,
                                            ctx.match("script"))
    stem = _UNSAFE.sub("_", view["name"]).strip("._") or "script"
    if view["entrypoint"]:
        filename, ctype = f"{stem}.tar.gz", "application/gzip"
    else:
        suffix = "" if "." in stem else (".yml" if view["exec_type"] == "ansible" else ".sh")
        filename, ctype = stem + suffix, "text/plain; charset=utf-8"
    return web.Response(body=content, headers={
        "Content-Type": ctype, "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Content-Type-Options": "nosniff", "X-Script-Sha256": view["sha256"]})
