"""Public routes that install agents: the script, the agent's package and its description,
and the wheels directory as a find-links index (for hosts without the package index).
None needs a credential: the join token the script is given is the credential."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from controller import keys
from controller.errors import BadRequest, NotFound
from controller.http.api import Ctx, RouteTable
from controller.install import script
from controller.install.package import AgentPackages
from controller.settings import Settings

routes = RouteTable("install")
PACKAGES = web.AppKey("agent_packages", AgentPackages)


def wheels_dir(settings: Settings) -> Path:
    """The ``agent_wheels_dir`` setting, or ``<data_dir>/wheels``."""
    return Path(settings.agent_wheels_dir or Path(settings.data_dir) / "wheels")


def packages(ctx: Ctx) -> AgentPackages:
    return ctx.request.app[PACKAGES]


def _nosniff(body: bytes, content_type: str) -> web.Response:
    return web.Response(body=body, content_type=content_type,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


@routes.route("GET", "/install/agent.sh", op="agent_install_script", auth=False,
              summary="The agent's install script (POSIX sh), for this controller")
async def install_script(ctx: Ctx) -> Any:
    return _nosniff(script.script(ctx.services.settings.public_url), "text/x-shellscript")


@routes.route("GET", "/install/agent.json", op="agent_package", auth=False, params=("format",),
              summary="The agent package this controller serves: version, file, SHA-256, and "
                      "how many dependency wheels it serves; format=shell answers OC_*='...' "
                      "lines (the install script reads them)")
async def package_description(ctx: Ctx) -> Any:
    fmt = ctx.param("format", "json")
    if fmt not in ("json", "shell"):
        raise BadRequest("format must be json or shell", field="format")
    p = packages(ctx)
    package = await asyncio.to_thread(p.agent)
    wheels = await asyncio.to_thread(p.wheels)
    answer = script.manifest(package, len(wheels))
    if fmt == "shell":
        return web.Response(text=script.shell_answer(answer), content_type="text/plain")
    return {"data": answer}


@routes.route("GET", "/install/packages/{file}", op="agent_package_file", auth=False,
              summary="The agent's wheel (built from this controller's own agent code)")
async def package_file(ctx: Ctx) -> Any:
    package = await asyncio.to_thread(packages(ctx).agent)
    if ctx.match("file") != package.filename:
        raise NotFound(f"no such package: this controller serves {package.filename}",
                       {"file": ctx.match("file")})
    return web.Response(body=package.data, content_type="application/octet-stream",
                        headers={"X-Checksum-Sha256": package.sha256})


@routes.route("GET", "/install/wheels/", op="agent_wheels_index", auth=False,
              summary="The agent's dependency wheels this controller serves (agent_wheels_dir), "
                      "as a pip find-links page")
async def wheels_index(ctx: Ctx) -> Any:
    return _nosniff(await asyncio.to_thread(packages(ctx).index_html), "text/html")


@routes.route("GET", "/install/wheels/{file}", op="agent_wheel_file", auth=False,
              summary="One wheel of agent_wheels_dir")
async def wheel_file(ctx: Ctx) -> Any:
    path = packages(ctx).wheel_path(ctx.match("file"))  # NotFound
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})


def setup(app: web.Application) -> None:
    """The package cache on the app (build_app calls this)."""
    app[PACKAGES] = AgentPackages(wheels_dir(app[keys.SETTINGS]))
