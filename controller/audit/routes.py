"""REST route of the audit log."""

from __future__ import annotations

from typing import Any

from controller.errors import BadRequest
from controller.http.api import LIST_PARAMS, Ctx, RouteTable, envelope

routes = RouteTable("logs")


@routes.route("GET", "/api/v2/logs", op="list_logs", summary="Audit log of your organisation",
              params=(*LIST_PARAMS, "since", "until", "user", "action", "outcome", "after", "allorgs"))
async def list_logs(ctx: Ctx) -> Any:
    after_s = ctx.param("after")
    after = None
    if after_s:
        if not after_s.isdigit():
            raise BadRequest("after must be an entry's sequence number", field="after")
        after = int(after_s)
    data, meta = ctx.services.audit.entries(
        ctx.principal, ctx.query(), since=ctx.param("since"), until=ctx.param("until"),
        user=ctx.param("user"), action=ctx.param("action"), outcome=ctx.param("outcome"),
        after=after, allorgs=ctx.flag("allorgs"))
    return envelope(data, meta)
