"""GET /api/v2/datapoints (Mist v2): time series of the caller's organisation."""

from __future__ import annotations

from typing import Any

from controller.http.api import Ctx, RouteTable
from controller.listing import parse_search
from controller.monitor.query import evaluate

routes = RouteTable("datapoints")


@routes.route("GET", "/api/v2/datapoints", op="get_datapoints",
              params=("query", "tags", "search", "start", "end", "step", "time"),
              summary="Datapoints: instant vector (time) or range matrix (start, end, step)")
async def get_datapoints(ctx: Ctx) -> Any:
    from controller.errors import BadRequest

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
    result = evaluate(ctx.services.tsdb, p.org_id, query, start=ctx.param("start"),
                      end=ctx.param("end"), step=ctx.param("step"), at=ctx.param("time"),
                      machine_ids=machine_ids)
    return {"data": result, "meta": {"total": len(result["data"]["result"]),
                                     "returned": len(result["data"]["result"]), "start": 0, "sort": ""}}
