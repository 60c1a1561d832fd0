"""GET /api/v2/datapoints (Mist v2): time series of the caller's organisation; GET /metrics:
the controller's own metrics for Prometheus (a platform admin's API token); and the TSDB's
background work (rollups, retention) as one cleanup context."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
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
    tsdb, start, end, step, at = (ctx.services.tsdb, ctx.param("start"), ctx.param("end"),
                                  ctx.param("step"), ctx.param("time"))

    def answer() -> bytes:
        result = evaluate(tsdb, p.org_id, query, start=start, end=end, step=step, at=at,
                          machine_ids=machine_ids)
        n = len(result["data"]["result"])
        # written here, in the worker thread, by orjson: a week of 1,000 series is 168,000
        # pairs, ~60 ms of json.dumps on the event loop
        return orjson.dumps({"data": result,
                             "meta": {"total": n, "returned": n, "start": 0, "sort": ""}})

    body = await asyncio.to_thread(answer)
    instrument.query_histogram(ctx.services.selfmetrics).observe(
        time.perf_counter() - started, kind="range" if ranged else "instant")
    return web.Response(body=body, content_type="application/json")


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
    """The controller's own metrics registered, the limits of a query set (REST and gRPC
    both evaluate on this TSDB); the TSDB's rollups and retention running
    (controller.monitor.compact) until the controller stops."""
    services, settings = app[keys.SERVICES], app[keys.SETTINGS]
    instrument.register(services)
    services.tsdb.query_max_samples = settings.query_max_samples
    services.tsdb.query_timeout = float(settings.query_timeout)
    compactor = Compactor(services.tsdb, settings.metric_retention,
                          settings.metric_rollup_retention, services.selfmetrics,
                          minute_retention=settings.metric_minute_rollup_retention)
    task = asyncio.create_task(maintain(compactor), name="tsdb compaction")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
