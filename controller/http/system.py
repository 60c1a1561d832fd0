"""Public routes about the controller itself: health, its OpenAPI document, its CA."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controller import keys
from controller.http.api import Ctx, RouteTable
from overcast import __version__

routes = RouteTable("system")


@routes.route("GET", "/api/v2/health", op="health", summary="Liveness; identifies this instance",
              auth=False)
async def health(ctx: Ctx) -> Any:
    return {"status": "ok", "version": __version__, "instance": ctx.request.app[keys.INSTANCE]}


@routes.route("GET", "/api/v2/openapi.json", op="openapi", summary="This API's OpenAPI document",
              auth=False)
async def openapi(ctx: Ctx) -> Any:
    return ctx.request.app[keys.OPENAPI]


@routes.route("GET", "/ca.pem", op="get_ca", summary="The controller's CA certificate (PEM)", auth=False)
async def ca(ctx: Ctx) -> Any:
    pki = ctx.request.app.get(keys.PKI)
    if pki is None:
        return web.Response(status=404, text="no CA", content_type="text/plain")
    return web.Response(body=pki.ca_pem, content_type="application/x-pem-file")
