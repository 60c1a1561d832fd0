"""REST routes of runs: run a script (Mist v2 ``POST /api/v2/scripts/{script}``), run an
ad-hoc command (``POST /api/v2/commands``, an Overcast extension), read a run's output and
cancel it (``/api/v2/jobs/{job}/output``, ``/api/v2/jobs/{job}/cancel``)."""

from __future__ import annotations

import asyncio
from typing import Any

from controller.errors import BadRequest
from controller.events.writer import Change
from controller.exec.service import inline_payload_parts
from controller.http.api import Ctx, Reply, RouteTable
from controller.http.schema import string

routes = RouteTable("runs")

_TARGETS = {
    "machine": string(0, 200),
    "machines": {"description": "machine ids, names or tag:key=value selectors (a list, or "
                                "one comma-separated string)"},
    "params": {"description": "arguments: one string split like a shell would, or a list"},
    "env": {"description": "NAME=value lines, or an object; values are never stored or logged"},
    "su": {"description": "run as root (\"true\"/\"false\" as in Mist, or a boolean)"},
    "timeout": {"description": "seconds before the run is killed (default: exec_timeout)"},
    "user": string(0, 64),
    "job_id": string(0, 64),
}
RUN_SCRIPT = {"type": "object", "properties": dict(_TARGETS), "additionalProperties": False}
RUN_COMMAND = {"type": "object", "required": ["command"], "additionalProperties": False,
               "properties": dict(_TARGETS, command=string(1, 65_536))}


def _job_reply(job: dict[str, Any]) -> Reply:
    return Reply({"data": job, "job_id": job["id"], "jobId": job["id"]}, status=202)


@routes.route("POST", "/api/v2/scripts/{script}", op="run_script", body=RUN_SCRIPT,
              summary="Run a script on one machine or many (ids, names, tag:key=value): a job; "
                      "through each machine's agent, else over SSH with its associated key")
async def run_script(ctx: Ctx) -> Any:
    svc = ctx.services.exec
    body = ctx.body or {}
    view, content = await asyncio.to_thread(ctx.services.scripts.payload, ctx.principal,
                                            ctx.match("script"))
    payload = svc.payload(body, content, view["sha256"], entrypoint=view.get("entrypoint") or "",
                          ansible=view.get("exec_type") == "ansible")
    routes_ = await asyncio.to_thread(svc.routes, ctx.principal, body)
    job = svc.start(ctx.principal, ctx.actor, "script.run", "script", view["id"], routes_, payload,
                    {"script": view["id"], "name": view["name"], "sha256": view["sha256"]})
    return _job_reply(job)


@routes.route("POST", "/api/v2/commands", op="run_command", body=RUN_COMMAND,
              summary="Run a shell command (/bin/sh -c) on one machine or many: a job")
async def run_command(ctx: Ctx) -> Any:
    svc = ctx.services.exec
    body = ctx.body or {}
    content, digest = inline_payload_parts(str(body["command"]))
    payload = svc.payload(body, content, digest, interpreter="/bin/sh")
    routes_ = await asyncio.to_thread(svc.routes, ctx.principal, body)
    job = svc.start(ctx.principal, ctx.actor, "command.run", "command", digest[:16], routes_,
                    payload, {"command": body["command"][:1000]})
    return _job_reply(job)


@routes.route("GET", "/api/v2/jobs/{job_id}/output", op="get_job_output",
              params=("machine", "after"),
              summary="The output a run kept, per machine ([stream, text] chunks in order); "
                      "after=N: only what came after the answer whose next was N")
async def job_output(ctx: Ctx) -> Any:
    raw = ctx.param("after") or "0"
    if not raw.isdigit() or len(raw) > 10:
        raise BadRequest("after must be the next of an earlier answer (a number)", field="after")
    data, last = await asyncio.to_thread(ctx.services.exec.output, ctx.principal,
                                         ctx.match("job_id"), ctx.param("machine"), int(raw))
    return {"data": data, "next": last}


@routes.route("POST", "/api/v2/jobs/{job_id}/cancel", op="cancel_job",
              summary="Cancel a running script or command: every process group is killed")
async def cancel_job(ctx: Ctx) -> Any:
    p = ctx.principal
    doc = ctx.services.jobs.cancel(p, ctx.match("job_id"))
    if not doc["already"]:
        ctx.services.writer.commit(ctx.actor, Change(
            "job.cancel", org=p.org_id, target_kind="job", target_id=doc["id"],
            details={"action": doc["action"]}))
    return Reply({"data": doc}, status=202)
