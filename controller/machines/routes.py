"""REST routes of machines (Mist v2 paths)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from controller.http.api import LIST_PARAMS, Ctx, RouteTable, envelope
from controller.listing import parse_search, project

routes = RouteTable("machines")


@routes.route("GET", "/api/v2/machines", op="list_machines", summary="List machines",
              params=(*LIST_PARAMS, "cloud"))
async def list_machines(ctx: Ctx) -> Any:
    query = ctx.query()
    cloud = ctx.param("cloud")
    if cloud:
        # Mist's `cloud` filter (an id or name) is a search term ANDed with the search
        ids = sorted(ctx.services.resources.cloud_ids(ctx.principal, cloud)) or [cloud]
        search = " OR ".join('cloud:"{}"'.format(i.replace("\\", "\\\\").replace('"', '\\"'))
                             for i in ids)
        search = f"({search})"
        if ctx.param("search"):
            search = f"({ctx.param('search')}) AND {search}"
        query = replace(query, search=parse_search(search))
    # a search reads every machine of the organisation: off the event loop, so one large
    # query never stalls other requests, streams and agents
    return envelope(*await asyncio.to_thread(ctx.services.machines.list, ctx.principal, query))


@routes.route("GET", "/api/v2/machines/{machine}", op="get_machine", summary="Show a machine",
              params=("only", "deref"))
async def get_machine(ctx: Ctx) -> Any:
    m = ctx.services.machines.get(ctx.principal, ctx.match("machine"))
    only = ctx.query().only
    return {"data": project(m, only)}


EDIT_MACHINE = {"type": "object", "additionalProperties": False, "properties": {
    "expiration": {"description": "{date, action: stop|destroy, notify: seconds before (or "
                                  "{period, value}), notify_msg}; null or {} clears it"}}}


@routes.route("PUT", "/api/v2/machines/{machine}", op="edit_machine", body=EDIT_MACHINE,
              summary="Edit a machine: set or clear its expiration (a date after which it is "
                      "stopped or destroyed, with an e-mail reminder before)")
async def edit_machine(ctx: Ctx) -> Any:
    body = ctx.body or {}
    if "expiration" in body:
        ctx.services.expirations.set(ctx.principal, ctx.actor, ctx.match("machine"),
                                     body["expiration"])
    return {"data": ctx.services.machines.get(ctx.principal, ctx.match("machine"))}
