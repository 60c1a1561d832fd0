"""REST routes of jobs (Mist v2: GET /api/v2/jobs/{job_id})."""

from __future__ import annotations

import asyncio
from typing import Any

from controller.http.api import LIST_PARAMS, Ctx, RouteTable, envelope, one

routes = RouteTable("jobs")


@routes.route("GET", "/api/v2/jobs", op="list_jobs", summary="List jobs", params=LIST_PARAMS)
async def list_jobs(ctx: Ctx) -> Any:
    return envelope(*await asyncio.to_thread(ctx.services.jobs.list, ctx.principal, ctx.query()))


@routes.route("GET", "/api/v2/jobs/{job_id}", op="get_job", summary="Show a job: status, progress, result")
async def get_job(ctx: Ctx) -> Any:
    return one(ctx.services.jobs.get(ctx.principal, ctx.match("job_id")))
