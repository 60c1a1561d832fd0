"""REST routes of monitoring: enable and disable it on a machine (Mist's v2 spec has no
monitoring operation on machines: Overcast's own actions, shaped like the spec's machine
actions, answering 202 with a job), and custom metric sources (``/api/v2/metrics/sources``).
The agents' source list is kept current by a task started with the app (``lifecycle``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from controller import keys
from controller.http.api import LIST_PARAMS, Ctx, Reply, RouteTable, envelope, one
from controller.http.schema import BOOLEAN, integer, obj, string
from controller.monitoring.service import MAX_INSTALL_TIMEOUT

log = logging.getLogger(__name__)
routes = RouteTable("monitoring")

_PATH = string(1, 200, description="an absolute path (letters, digits and _ . / + -)")
ENABLE_BODY = obj(
    (), user=dict(BOOLEAN, description="run the agent as the unprivileged user overcast-agent "
                                       "(the install script's --user; default: root)"),
    prefix=_PATH, config_dir=_PATH, state_dir=_PATH,
    interval=integer(1, 3600, description="seconds between metric samples (default: the "
                                          "controller's metric_interval)"),
    timeout=integer(30, MAX_INSTALL_TIMEOUT, description="seconds the install may take "
                                                         "(default 900)"))
DISABLE_BODY = obj((), force=dict(BOOLEAN, description="revoke the agent even when the host "
                                                      "cannot be reached or the uninstall fails"))


def _job_reply(job: dict[str, Any]) -> Reply:
    return Reply({"data": job, "job_id": job["id"], "jobId": job["id"]}, status=202)


@routes.route("POST", "/api/v2/machines/{machine}/actions/enable-monitoring",
              op="enable_monitoring", body=ENABLE_BODY,
              summary="Enable monitoring on a machine without an agent: a job that installs the "
                      "agent over SSH with the machine's key (the install script's output is "
                      "the job's) and links it to the machine; 409 when it is on already")
async def enable_monitoring(ctx: Ctx) -> Any:
    # on the loop: the job starts there (the checks before it read a few documents)
    job = ctx.services.monitoring.enable(ctx.principal, ctx.actor, ctx.match("machine"),
                                        ctx.body or {})
    return _job_reply(job)


@routes.route("POST", "/api/v2/machines/{machine}/actions/disable-monitoring",
              op="disable_monitoring", body=DISABLE_BODY,
              summary="Disable monitoring: a job that uninstalls the agent (over SSH, else "
                      "through the agent) and revokes it; owners only; 409 when it is off")
async def disable_monitoring(ctx: Ctx) -> Any:
    # on the loop: the job starts there (the checks before it read a few documents)
    job = ctx.services.monitoring.disable(ctx.principal, ctx.actor, ctx.match("machine"),
                                        ctx.body or {})
    return _job_reply(job)


_SELECTORS = {"type": "array", "maxItems": 20, "description": (
    "Mist's selectors, all of which a machine must match: {\"type\": \"machines\", \"ids\": "
    "[...]} or {\"type\": \"tags\", \"include\": [\"key=value\", \"key\"]}"),
    "items": {"type": "object"}}
_SOURCE_FIELDS: dict[str, Any] = {
    "name": string(1, 100, description="also the source label of its samples"),
    "script": string(1, 200, description="a script of the library (id or name): one "
                                         "executable file that prints Prometheus text format"),
    "selectors": _SELECTORS,
    "interval": integer(0, 86_400, description="seconds between runs (0: the agent's metric "
                                               "interval)"),
    "timeout": integer(1, 600, description="seconds a run may take (default 10)"),
}
SOURCE_BODY = obj(("name", "script", "selectors"), **_SOURCE_FIELDS)
SOURCE_EDIT = obj((), **_SOURCE_FIELDS)


@routes.route("GET", "/api/v2/metrics/sources", op="list_metric_sources", params=LIST_PARAMS,
              summary="List custom metric sources")
async def list_sources(ctx: Ctx) -> Any:
    return envelope(*await asyncio.to_thread(ctx.services.metric_sources.list_sources, ctx.principal,
                                             ctx.query()))


@routes.route("POST", "/api/v2/metrics/sources", op="create_metric_source", body=SOURCE_BODY,
              summary="Add a custom metric source: a script the agents of the selected "
                      "machines run every interval, its output (Prometheus text format) "
                      "stored as samples")
async def create_source(ctx: Ctx) -> Any:
    doc = await asyncio.to_thread(ctx.services.metric_sources.create, ctx.principal, ctx.actor,
                                  ctx.body)
    return Reply(one(doc), status=201)


@routes.route("GET", "/api/v2/metrics/sources/{source}", op="get_metric_source",
              summary="Show a metric source, the machines it selects now, and what their agents "
                      "last reported (samples, errors, bad lines, timeouts)")
async def get_source(ctx: Ctx) -> Any:
    return one(await asyncio.to_thread(ctx.services.metric_sources.get, ctx.principal,
                                       ctx.match("source")))


@routes.route("PATCH", "/api/v2/metrics/sources/{source}", op="edit_metric_source",
              body=SOURCE_EDIT, summary="Edit a metric source (agents get the change at once)")
async def edit_source(ctx: Ctx) -> Any:
    return one(await asyncio.to_thread(ctx.services.metric_sources.edit, ctx.principal,
                                       ctx.actor, ctx.match("source"), ctx.body or {}))


@routes.route("DELETE", "/api/v2/metrics/sources/{source}", op="delete_metric_source",
              summary="Delete a metric source (its agents stop running it)")
async def delete_source(ctx: Ctx) -> Any:
    await asyncio.to_thread(ctx.services.metric_sources.delete, ctx.principal, ctx.actor,
                            ctx.match("source"))
    return Reply(status=204)


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Machines a stopped controller left in the middle of a monitoring job say so; the task
    that keeps the agents' metric sources current runs until the app stops."""
    services = app[keys.SERVICES]
    n = await asyncio.to_thread(services.monitoring.sweep_interrupted)
    if n:
        log.warning("%d monitoring job(s) were interrupted by the last stop", n)
    task = asyncio.get_running_loop().create_task(services.source_push.run(),
                                                  name="metric sources")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
