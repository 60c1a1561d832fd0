"""REST routes of schedules (Mist v2 ``/api/v2/schedules``; the runs, and enable/disable as
rules have it, ``PUT ...?action=enable|disable``, are Overcast's) and the scheduler's place in
the controller's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from controller import keys
from controller.errors import BadRequest
from controller.http.api import LIST_PARAMS, Ctx, Reply, RouteTable, envelope, one
from controller.listing import project

routes = RouteTable("schedules")


def _doc(text: str) -> dict[str, Any]:
    return {"description": text}


# Unknown fields are refused here (422, as everywhere); the values are checked by the
# schedule's own checks (400 naming the field, and the position in cron text), so the schema
# only documents them.
SCHEDULE_BODY: dict[str, Any] = {"type": "object", "additionalProperties": False,
                                 "properties": {
    "name": _doc("unique in the organisation (default: schedule-<id>)"),
    "description": _doc("text"),
    "tags": _doc("key -> value"),
    "enabled": _doc("true (default) or false"),
    "selectors": _doc("machines chosen at each run, all must hold: {type: machines, ids}, "
                      "{type: tags, include: [key or key=value]}, {type: age, minutes}, "
                      "{type: field, field, value, operator: eq|regex}"),
    "actions": _doc("in order: {action_type: start|stop|reboot|destroy|suspend|resume}, "
                    "{action_type: resize, params: size}, {action_type: run_script, "
                    "script_type: existing, script, params} or {..., script_type: inline, "
                    "command}, {action_type: notify, users, emails, subject, message}"),
    "when": _doc("{schedule_type: interval, every, period: seconds|minutes|hours|days} | "
                 "{schedule_type: crontab, minute, hour, day_of_month, month_of_year, "
                 "day_of_week (or expression), timezone} | {schedule_type: one_off, datetime}"),
    "start_after": _doc("no run before this time (ISO 8601)"),
    "expires": _doc("no run at or after this time (ISO 8601)"),
    "max_run_count": _doc("stop after this many runs (also accepted in when)"),
    "run_immediately": _doc("run once now as well"),
    "missed": _doc("runs missed while the controller was down: run_once (default) or skip"),
    "reminder": _doc("e-mail the owner before each run: {message, when: {unit, value}}"),
}}


@routes.route("GET", "/api/v2/schedules", op="list_schedules", summary="List schedules",
              params=LIST_PARAMS)
async def list_schedules(ctx: Ctx) -> Any:
    return envelope(*await asyncio.to_thread(ctx.services.schedules.list_schedules, ctx.principal,
                                             ctx.query()))


@routes.route("POST", "/api/v2/schedules", op="add_schedule", body=SCHEDULE_BODY,
              summary="Add a schedule: run a script, a machine action or a notification on "
                      "machines chosen at each run, on an interval, a crontab or once")
async def add_schedule(ctx: Ctx) -> Any:
    doc = ctx.services.schedules.add(ctx.principal, ctx.actor, ctx.body or {})
    return Reply({"data": doc, "id": doc["id"]}, status=201)


@routes.route("GET", "/api/v2/schedules/{schedule}", op="get_schedule",
              params=("only", "deref"), summary="Show a schedule (id or name)")
async def get_schedule(ctx: Ctx) -> Any:
    doc = ctx.services.schedules.get(ctx.principal, ctx.match("schedule"))
    return one(project(doc, ctx.query().only))


@routes.route("PATCH", "/api/v2/schedules/{schedule}", op="edit_schedule", body=SCHEDULE_BODY,
              summary="Edit a schedule: the fields given change, the others stay")
async def edit_schedule(ctx: Ctx) -> Any:
    return one(ctx.services.schedules.edit(ctx.principal, ctx.actor, ctx.match("schedule"),
                                           ctx.body or {}))


@routes.route("PUT", "/api/v2/schedules/{schedule}", op="toggle_schedule", params=("action",),
              summary="Enable or disable a schedule (?action=enable|disable)")
async def toggle_schedule(ctx: Ctx) -> Any:
    action = ctx.param("action")
    if action not in ("enable", "disable"):
        raise BadRequest("action must be enable or disable", field="action")
    return one(ctx.services.schedules.toggle(ctx.principal, ctx.actor, ctx.match("schedule"),
                                             action == "enable"))


@routes.route("DELETE", "/api/v2/schedules/{schedule}", op="delete_schedule",
              summary="Delete a schedule and its runs")
async def delete_schedule(ctx: Ctx) -> Any:
    ctx.services.schedules.delete(ctx.principal, ctx.actor, ctx.match("schedule"))
    return Reply(status=204)


@routes.route("GET", "/api/v2/schedules/{schedule}/runs", op="list_schedule_runs",
              params=LIST_PARAMS,
              summary="A schedule's runs, newest first: when, why, on which machines, and "
                      "each action's outcome per machine (job ids, exit codes, errors)")
async def list_runs(ctx: Ctx) -> Any:
    return envelope(*await asyncio.to_thread(ctx.services.schedules.runs, ctx.principal,
                                             ctx.match("schedule"), ctx.query()))


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """The scheduler: runs left running by the last stop are marked interrupted, then one
    task runs what is due; on the way out, runs in progress are cancelled (interrupted)."""
    scheduler = app[keys.SERVICES].scheduler
    scheduler.start()
    task = asyncio.create_task(scheduler.run_forever(), name="scheduler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await scheduler.stop()
