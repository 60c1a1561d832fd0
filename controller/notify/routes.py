"""REST routes of notifications (Overcast's): what rules and schedules sent or tried to
send, with every attempt's outcome, and retrying one that failed."""

from __future__ import annotations

import asyncio
from typing import Any

from controller.errors import Invalid
from controller.http.api import LIST_PARAMS, Ctx, RouteTable, envelope, one
from controller.notify.model import KINDS, STATUSES

routes = RouteTable("notifications")


@routes.route("GET", "/api/v2/notifications", op="list_notifications",
              params=(*LIST_PARAMS, "status", "kind"),
              summary="List notifications, newest first (status: pending, sent, failed; kind: "
                      "email, webhook; search context.incident:ID and the like)")
async def list_notifications(ctx: Ctx) -> Any:
    status, kind = ctx.param("status"), ctx.param("kind")
    if status and status not in STATUSES:
        raise Invalid(f"status must be one of: {', '.join(STATUSES)}", field="status")
    if kind and kind not in KINDS:
        raise Invalid(f"kind must be one of: {', '.join(KINDS)}", field="kind")
    return envelope(*await asyncio.to_thread(ctx.services.notify.list, ctx.principal,
                                             ctx.query(), status, kind))


@routes.route("GET", "/api/v2/notifications/{notification}", op="get_notification",
              summary="Show a notification and its attempts")
async def get_notification(ctx: Ctx) -> Any:
    return one(ctx.services.notify.get(ctx.principal, ctx.match("notification")))


@routes.route("POST", "/api/v2/notifications/{notification}/retry", op="retry_notification",
              summary="Send a failed notification again")
async def retry_notification(ctx: Ctx) -> Any:
    return one(ctx.services.notify.retry(ctx.principal, ctx.actor, ctx.match("notification")))
