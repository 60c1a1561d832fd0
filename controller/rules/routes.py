"""REST routes of rules (Mist v2 ``/api/v2/rules``: list, add, get, edit (POST), rename
(PATCH ?name=), toggle (PUT ?action=enable|disable), delete) and incidents
(``/api/v2/incidents``, Overcast's), and the evaluator's place in the controller's life."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from controller import keys
from controller.errors import BadRequest
from controller.http.api import LIST_PARAMS, Ctx, Reply, RouteTable, envelope, one
from controller.listing import project
from controller.rules.evaluator import finish

log = logging.getLogger(__name__)

routes = RouteTable("rules")
incident_routes = RouteTable("incidents")

_ANY_LIST = {"type": "array", "maxItems": 100}
_OFFSET = {"type": "object", "description": "{offset, period}: period seconds, minutes, hours, days"}
_RULE_PROPS: dict[str, Any] = {
    "name": {"type": "string", "description": "the rule's name (unique in the organisation)"},
    "description": {"description": "what the rule is for"},
    "conditions": dict(_ANY_LIST, description="[{data_type: metrics|logs|nodata, query: {target, "
                       "operator: gt|lt|eq|ne|ge|le, threshold (a number), aggregation: "
                       "all|any|avg|count}, window: {start, stop, period}}], all must hold"),
    "selectors": dict(_ANY_LIST, description="[{type: machines, ids}, {type: tags, include: "
                      "[key=value]}, {type: field, field, value, operator: eq|regex}, {type: age, "
                      "minutes}]; all must match; none: every monitored machine"),
    "actions": dict(_ANY_LIST, description="[{action_type: notify (emails, users), webhook "
                    "(method, url, headers, json, data, secret_headers), run_script (script or "
                    "command, params), stop|start|reboot|destroy|resize..., on_resolve}]"),
    "when": {"type": "object", "description": "{schedule_type: interval, every, period}"},
    "frequency": {"type": "object", "description": "Mist v1's name for when"},
    "trigger_after": _OFFSET,
    "notify_every": dict(_OFFSET, description="repeat notifications while firing, at most this "
                         "often (0: once); also the least time between two firings' notifications"),
    "enabled": {"type": "boolean"},
    "queries": dict(_ANY_LIST, description="Mist v1: queries over one window (read as conditions)"),
    "window": {"type": "object", "description": "Mist v1: the window of queries"},
    "data_type": {"type": "string", "description": "Mist v1: the data type of queries"},
}
ADD_RULE = {"type": "object", "required": ["name", "conditions"], "properties": _RULE_PROPS,
            "additionalProperties": False}
EDIT_RULE = {"type": "object", "properties": _RULE_PROPS, "additionalProperties": False}


@routes.route("GET", "/api/v2/rules", op="list_rules", params=LIST_PARAMS, summary="List rules")
async def list_rules(ctx: Ctx) -> Any:
    return envelope(*await asyncio.to_thread(ctx.services.rules.list_rules, ctx.principal, ctx.query()))


@routes.route("POST", "/api/v2/rules", op="add_rule", body=ADD_RULE,
              summary="Add a rule on metrics, logs (audit entries) or missing data")
async def add_rule(ctx: Ctx) -> Any:
    doc = await asyncio.to_thread(ctx.services.rules.add, ctx.principal, ctx.actor, ctx.body)
    return Reply({"data": doc, "id": doc["id"]}, status=201)


@routes.route("GET", "/api/v2/rules/{rule}", op="get_rule", params=("only",),
              summary="Show a rule (id or name)")
async def get_rule(ctx: Ctx) -> Any:
    return one(project(ctx.services.rules.get(ctx.principal, ctx.match("rule")), ctx.query().only))


@routes.route("POST", "/api/v2/rules/{rule}", op="edit_rule", body=EDIT_RULE,
              summary="Edit a rule: the parts given replace the rule's")
async def edit_rule(ctx: Ctx) -> Any:
    return one(await asyncio.to_thread(ctx.services.rules.edit, ctx.principal, ctx.actor,
                                       ctx.match("rule"), ctx.body))


@routes.route("PATCH", "/api/v2/rules/{rule}", op="rename_rule", params=("name",),
              summary="Rename a rule (?name=)")
async def rename_rule(ctx: Ctx) -> Any:
    name = ctx.param("name") or (ctx.body or {}).get("name", "")
    if not name:
        raise BadRequest("name is required (?name=NEW)", field="name")
    return one(ctx.services.rules.rename(ctx.principal, ctx.actor, ctx.match("rule"), name))


@routes.route("PUT", "/api/v2/rules/{rule}", op="toggle_rule", params=("action",),
              summary="Enable or disable a rule (?action=enable|disable)")
async def toggle_rule(ctx: Ctx) -> Any:
    action = ctx.param("action") or (ctx.body or {}).get("action", "")
    if action not in ("enable", "disable"):
        raise BadRequest("action must be enable or disable (?action=)", field="action")
    return one(ctx.services.rules.toggle(ctx.principal, ctx.actor, ctx.match("rule"), action))


@routes.route("DELETE", "/api/v2/rules/{rule}", op="delete_rule",
              summary="Delete a rule (its open incidents resolve)")
async def delete_rule(ctx: Ctx) -> Any:
    ctx.services.rules.delete(ctx.principal, ctx.actor, ctx.match("rule"))
    return Reply(status=204)


@incident_routes.route("GET", "/api/v2/incidents", op="list_incidents",
                       params=(*LIST_PARAMS, "state", "rule", "machine", "since", "until"),
                       summary="List incidents, newest first (state: pending, firing, resolved "
                               "or open; rule and machine: id or name; since/until: started)")
async def list_incidents(ctx: Ctx) -> Any:
    data, meta = await asyncio.to_thread(
        ctx.services.incidents.list, ctx.principal, ctx.query(), state=ctx.param("state"),
        rule=ctx.param("rule"), machine=ctx.param("machine"), since=ctx.param("since"),
        until=ctx.param("until"))
    return envelope(data, meta)


@incident_routes.route("GET", "/api/v2/incidents/{incident}", op="get_incident",
                       summary="Show an incident with the state of its notifications")
async def get_incident(ctx: Ctx) -> Any:
    inc = ctx.services.incidents.get(ctx.principal, ctx.match("incident"))
    inc["notifications"] = ctx.services.notify.views(ctx.principal.org_id, inc["notifications"])
    return one(inc)


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """The notification queue (what waited when the controller stopped is sent now) and the
    rule evaluator, each a background task; cancelled on the way out (a notification being
    sent then stays pending and goes after the next start)."""
    services = app[keys.SERVICES]
    n = await asyncio.to_thread(services.notify.load_pending)
    if n:
        log.info("%d notification(s) wait to be sent", n)
    notifier = asyncio.create_task(services.notify.run(), name="notifications")
    evaluator = asyncio.create_task(services.evaluator.run(), name="rules")

    async def prune() -> None:
        while True:
            await asyncio.sleep(3600)
            cutoff = time.time() - app[keys.SETTINGS].incident_retention
            try:
                a = await finish(asyncio.to_thread(services.incidents.prune, cutoff))
                b = await finish(asyncio.to_thread(services.notify.prune, cutoff))
                if a or b:
                    log.info("deleted %d old incident(s) and %d old notification(s)", a, b)
            except Exception:
                log.exception("pruning incidents and notifications failed")

    pruner = asyncio.create_task(prune(), name="incident retention")
    yield
    for t in (evaluator, notifier, pruner):
        t.cancel()
    for t in (evaluator, notifier, pruner):
        with contextlib.suppress(asyncio.CancelledError):
            await t
