"""REST routes of machines (Mist v2 paths)."""

from __future__ import annotations

from typing import Any

from controller.http.api import LIST_PARAMS, Ctx, RouteTable, envelope
from controller.listing import project

routes = RouteTable("machines")


@routes.route("GET", "/api/v2/machines", op="list_machines", summary="List machines",
              params=(*LIST_PARAMS, "cloud"))
async def list_machines(ctx: Ctx) -> Any:
    return envelope(*ctx.services.machines.list(ctx.principal, ctx.query()))


@routes.route("GET", "/api/v2/machines/{machine}", op="get_machine", summary="Show a machine",
              params=("only", "deref"))
async def get_machine(ctx: Ctx) -> Any:
    m = ctx.services.machines.get(ctx.principal, ctx.match("machine"))
    only = ctx.query().only
    return {"data": project(m, only)}
