"""GET /api/v2/datapoints (Mist v2): time series of the caller's organisation; GET /metrics:
the controller's own metrics for Prometheus (a platform admin's API token); and the TSDB's
background work (rollups, retention) as one cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from controller import keys
from controller.errors import BadRequest, Forbidden
from controller.http.api import Ctx, RouteTable
from controller.listing import parse_search
from controller.monitor import instrument
from controller.monitor.compact import Compactor, maintain
from controller.monitor.query import evaluate
from controller.monitor.selfmetrics import CONTENT_TYPE

routes = RouteTable("datapoints")
metrics_routes = RouteTable("metrics")


@routes.route("GET", "/api/v2/datapoints", op="get_datapoints",
              params=("query", "tags", "search", "start", "end", "step", "time"),
              summary="Datapoints: instant vector (time) or range matrix (start, end, step)")
async def get_datapoints(ctx: Ctx) -> Any:
    p = ctx.principal
    query = ctx.param("query")
    if not query:
        raise BadRequest("query is required, e.g. system_load1{machine_id=\"...\"}", field="query")
    machine_ids = None
    tags, search = ctx.param("tags"), ctx.param("search")
    if tags or search:
        terms = [f'tags.{k.strip()}:"{v.strip()}"' if v.strip() else f"tags:{k.strip()}"
                 for k, _, v in (t.partition("=") for t in tags.split(",") if t.strip())]
        if search:
            terms.append(f"({search})")
        machine_ids = ctx.services.machines.matching_ids(p, parse_search(" AND ".join(terms)))
    ranged = any(ctx.param(k) for k in ("start", "end", "step"))
    started = time.perf_counter()
    result = await asyncio.to_thread(
        evaluate, ctx.services.tsdb, p.org_id, query, start=ctx.param("start"),
        end=ctx.param("end"), step=ctx.param("step"), at=ctx.param("time"),
        machine_ids=machine_ids)
    instrument.query_histogram(ctx.services.selfmetrics).observe(
        time.perf_counter() - started, kind="range" if ranged else "instant")
    n = len(result["data"]["result"])
    return {"data": result, "meta": {"total": n, "returned": n, "start": 0, "sort": ""}}


@metrics_routes.route("GET", "/metrics", op="get_metrics",
                      summary="The controller's own metrics in the Prometheus text format "
                              "(platform admins)")
async def get_metrics(ctx: Ctx) -> Any:
    if not ctx.principal.is_admin:
        raise Forbidden("the controller's metrics are for platform admins: scrape with an API "
                        "token of a platform admin")
    text = await asyncio.to_thread(ctx.services.selfmetrics.render)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """The controller's own metrics registered; the TSDB's rollups and retention running
    (controller.monitor.compact) until the controller stops."""
    services, settings = app[keys.SERVICES], app[keys.SETTINGS]
    instrument.register(services)
    compactor = Compactor(services.tsdb, settings.metric_retention,
                          settings.metric_rollup_retention, services.selfmetrics,
                          minute_retention=settings.metric_minute_rollup_retention)
    task = asyncio.create_task(maintain(compactor), name="tsdb compaction")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
