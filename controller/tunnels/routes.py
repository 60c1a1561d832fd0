"""REST routes of tunnels (our own resource, Mist-v2 conventions), the gateway's
registration and its install script (both public: the one-use token is the credential)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from controller.errors import BadRequest
from controller.http.api import LIST_PARAMS, Ctx, Reply, RouteTable, envelope, one
from controller.http.schema import obj, string
from controller.listing import apply, project
from controller.tunnels import install
from controller.tunnels.model import MAX_CIDRS

routes = RouteTable("tunnels")

CIDRS: dict[str, Any] = {"type": "array", "items": string(1, 64), "maxItems": MAX_CIDRS}
# gateway_agent: a machine (id or name) whose connected Overcast agent is told to be the
# gateway (no install command then); "" in an edit goes back to the install script (rotate)
CREATE = obj(("name", "cidrs"), name=string(1, 100), cidrs=CIDRS, excluded=CIDRS,
             gateway_agent=string(0, 200))
EDIT = obj((), name=string(1, 100), cidrs=CIDRS, excluded=CIDRS, gateway_agent=string(0, 200))
REGISTER = obj(("token", "public_key"), token=string(1, 200), public_key=string(1, 100))


@routes.route("GET", "/api/v2/tunnels", op="list_tunnels", summary="List tunnels, with health",
              params=LIST_PARAMS)
async def list_tunnels(ctx: Ctx) -> Any:
    return envelope(*apply(ctx.services.tunnels.list_tunnels(ctx.principal), ctx.query()))


@routes.route("POST", "/api/v2/tunnels", op="create_tunnel", body=CREATE,
              summary="Create a tunnel: its gateway's one-use token and install command are "
                      "shown once; or, with gateway_agent, a machine's agent is told to be the "
                      "gateway (404: no such machine with an agent; 422: its agent is not "
                      "connected)")
async def create_tunnel(ctx: Ctx) -> Any:
    doc = await ctx.services.tunnels.create(ctx.principal, ctx.actor, ctx.body)
    return Reply({"data": doc, "id": doc["id"]}, status=201)


@routes.route("POST", "/api/v2/tunnels/register", op="register_tunnel_gateway", auth=False,
              body=REGISTER, params=("format",),
              summary="Register a gateway's public key with its one-use token (the install "
                      "script does this); format=shell answers OC_*='...' lines")
async def register(ctx: Ctx) -> Any:
    fmt = ctx.param("format", "json")
    if fmt not in ("json", "shell"):
        raise BadRequest("format must be json or shell", field="format")
    r = await ctx.services.tunnels.register(ctx.ip, ctx.body["token"], ctx.body["public_key"])
    if fmt == "shell":
        text = install.shell_answer({f"OC_{k.upper()}": v for k, v in r.items() if k != "name"})
        return web.Response(status=201, text=text, content_type="text/plain")
    return Reply({"data": r}, status=201)


@routes.route("GET", "/install/tunnel.sh", op="tunnel_install_script", auth=False,
              summary="The tunnel gateway's install script (POSIX sh)")
async def install_script(ctx: Ctx) -> Any:
    return web.Response(body=install.script(), content_type="text/x-shellscript",
                        headers={"X-Content-Type-Options": "nosniff"})


@routes.route("GET", "/api/v2/tunnels/{tunnel}", op="get_tunnel", params=("only",),
              summary="Show a tunnel (id or name), with health")
async def get_tunnel(ctx: Ctx) -> Any:
    return one(project(ctx.services.tunnels.get(ctx.principal, ctx.match("tunnel")), ctx.query().only))


@routes.route("PUT", "/api/v2/tunnels/{tunnel}", op="edit_tunnel", body=EDIT,
              summary="Rename a tunnel, change its CIDRs (checked again; the hub follows) or "
                      "its gateway agent")
async def edit_tunnel(ctx: Ctx) -> Any:
    return one(await ctx.services.tunnels.edit(ctx.principal, ctx.actor, ctx.match("tunnel"), ctx.body))


@routes.route("DELETE", "/api/v2/tunnels/{tunnel}", op="delete_tunnel", params=("force",),
              summary="Delete a tunnel (409 while machines are reached through it, unless "
                      "force=true)")
async def delete_tunnel(ctx: Ctx) -> Any:
    await ctx.services.tunnels.delete(ctx.principal, ctx.actor, ctx.match("tunnel"), ctx.flag("force"))
    return Reply(status=204)


@routes.route("POST", "/api/v2/tunnels/{tunnel}/actions/rotate", op="rotate_tunnel",
              summary="Rotate the gateway's key: a new one-use token and install command "
                      "(--rotate); or, when an agent is the gateway, it is asked over its stream "
                      "for a new key (422: its agent is not connected)")
async def rotate_tunnel(ctx: Ctx) -> Any:
    return one(await ctx.services.tunnels.rotate(ctx.principal, ctx.actor, ctx.match("tunnel")))
