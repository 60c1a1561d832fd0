"""REST routes of agents and join tokens (our own resources, Mist-v2 conventions)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from controller import keys
from controller.agents.model import PROTOCOL_VERSION
from controller.agents.service import parse_tags
from controller.agents.upgrade import Upgrades
from controller.errors import Invalid
from controller.http.api import LIST_PARAMS, Ctx, Reply, RouteTable, envelope, one
from controller.http.schema import BOOLEAN, integer, obj, string
from controller.install.routes import packages
from controller.listing import apply

routes = RouteTable("agents")
UPGRADES = web.AppKey("agent_upgrades", Upgrades)

JOIN_BODY = obj((), ttl=integer(1, description="seconds; default: the join_token_ttl setting"),
                uses=integer(1, 100_000), tags={"oneOf": [{"type": "string"}, {"type": "object"}]},
                name=string(0, 100),
                tunnel=string(1, 100, description="a tunnel (id or name): the token is for hosts "
                              "behind it, which reach the controller at the tunnel hub's address"))


@routes.route("GET", "/api/v2/agents/bootstrap", op="agent_bootstrap", auth=False,
              summary="Where agents connect (gRPC endpoint) and the CA fingerprint to pin")
async def bootstrap(ctx: Ctx) -> Any:
    s = ctx.services.settings
    pki = ctx.request.app.get(keys.PKI)
    return {"grpc": s.agents_public_endpoint, "protocol_version": PROTOCOL_VERSION,
            "ca_fingerprint": f"sha256:{pki.ca_fingerprint}" if pki else ""}


ENROLL_BODY = obj(("join_token", "csr_pem"), join_token=string(1, 200), csr_pem=string(1, 16_384),
                  hostname=string(0, 253), agent_version=string(0, 64),
                  protocol_version=integer(0, 1_000_000))


@routes.route("POST", "/api/v2/agents/enroll", op="enroll_agent", auth=False, body=ENROLL_BODY,
              summary="Enrol an agent: join token + CSR made on the host -> its certificate")
async def enroll(ctx: Ctx) -> Any:
    b = ctx.body
    r = await asyncio.to_thread(
        ctx.services.agents.enroll, ctx.ip, b["join_token"], b["csr_pem"].encode(),
        b.get("hostname", ""), b.get("agent_version", ""), b.get("protocol_version", 0))
    return Reply({"agent_id": r["agent_id"], "org": r["org"],
                  "certificate_pem": r["certificate_pem"].decode(), "ca_pem": r["ca_pem"].decode(),
                  "not_after": r["not_after"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "grpc": _grpc_endpoint(ctx, r["org"], r.get("tunnel", ""))}, status=201)


def _grpc_endpoint(ctx: Ctx, org: str, tunnel: str) -> str:
    """Where this agent dials: the tunnel hub's agents listener when its join token is for a
    tunnel (that still exists) or when it enrolled through the hub address; else the public
    agents endpoint."""
    tunnels = ctx.services.tunnels
    ends = tunnels.agent_endpoints(org, tunnel) if tunnel else None
    if ends is None:
        sock = ctx.request.transport.get_extra_info("sockname") if ctx.request.transport else None
        if sock and tunnels.hub.address and sock[0] == tunnels.hub.address:
            ends = tunnels.hub_endpoints()
    return ends[1] if ends else ctx.services.settings.agents_public_endpoint


@routes.route("GET", "/api/v2/agents/tokens", op="list_join_tokens", summary="List join tokens",
              params=LIST_PARAMS)
async def list_join_tokens(ctx: Ctx) -> Any:
    return envelope(*apply(ctx.services.agents.list_join_tokens(ctx.principal), ctx.query()))


@routes.route("POST", "/api/v2/agents/tokens", op="create_join_token", body=JOIN_BODY,
              summary="Create a join token (shown once, with the agent install command)")
async def create_join_token(ctx: Ctx) -> Any:
    b = ctx.body
    tags = b.get("tags", {})
    if isinstance(tags, str):
        tags = parse_tags(tags)
    elif isinstance(tags, dict):
        if not all(isinstance(v, str) for v in tags.values()):
            raise Invalid("tag values must be strings", field="tags")
        parse_tags(",".join(f"{k}={v}" for k, v in tags.items()))
    else:
        raise Invalid("tags must be 'k=v,...' or an object", field="tags")
    tunnel, url = "", ""
    if b.get("tunnel"):
        tunnel = ctx.services.tunnels.get(ctx.principal, b["tunnel"])["id"]  # NotFound
        url = ctx.services.tunnels.hub_endpoints()[0]
    secret, tok = ctx.services.agents.create_join_token(
        ctx.principal, ctx.actor, b.get("ttl"), b.get("uses", 1), tags, b.get("name", ""),
        tunnel, url)
    return Reply(tok, status=201)


@routes.route("DELETE", "/api/v2/agents/tokens/{token}", op="delete_join_token",
              summary="Delete a join token")
async def delete_join_token(ctx: Ctx) -> Any:
    ctx.services.agents.delete_join_token(ctx.principal, ctx.actor, ctx.match("token"))
    return Reply(status=204)


@routes.route("GET", "/api/v2/agents", op="list_agents", summary="List agents", params=LIST_PARAMS)
async def list_agents(ctx: Ctx) -> Any:
    agents = ctx.services.agents.list(ctx.principal)
    live = ctx.services.registry.connected_ids()
    for a in agents:
        a["connected"] = a["id"] in live
    return envelope(*apply(agents, ctx.query()))


UPGRADE_BODY = obj(("on",), on={"description": "agents: ids, names or tag:key=value (a list, "
                                              "or one comma-separated string)"},
                   force={**BOOLEAN, "description": "reinstall agents that run this version already"})


@routes.route("POST", "/api/v2/agents/upgrade", op="upgrade_agents", body=UPGRADE_BODY,
              summary="Upgrade agents to the version this controller serves, through their "
                      "streams: a job (progress and a result per agent)")
async def upgrade_agents(ctx: Ctx) -> Any:
    on = ctx.body["on"]
    if isinstance(on, str):
        on = [r for r in on.split(",") if r.strip()]
    if not isinstance(on, list) or not all(isinstance(r, str) for r in on):
        raise Invalid("on must be a list of agent ids, names or tag:key=value", field="on")
    p = packages(ctx)
    package = await asyncio.to_thread(p.agent)
    wheels = len(await asyncio.to_thread(p.wheels))
    job = ctx.request.app[UPGRADES].start(ctx.principal, ctx.actor, on,
                                          bool(ctx.body.get("force")), package, wheels)
    return Reply({"data": job, "job_id": job["id"], "jobId": job["id"]}, status=202)


@routes.route("GET", "/api/v2/agents/{agent}", op="get_agent", summary="Show an agent")
async def get_agent(ctx: Ctx) -> Any:
    a = ctx.services.agents.get(ctx.principal, ctx.match("agent"))
    a["connected"] = ctx.services.registry.get(a["id"]) is not None
    return one(a)


@routes.route("DELETE", "/api/v2/agents/{agent}", op="revoke_agent",
              summary="Revoke an agent: its stream ends now and its certificate is refused")
async def revoke_agent(ctx: Ctx) -> Any:
    a = ctx.services.agents.revoke(ctx.principal, ctx.actor, ctx.match("agent"))
    ctx.services.registry.end(a["id"], "the agent was revoked")
    return one(a)
