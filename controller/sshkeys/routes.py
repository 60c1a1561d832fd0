"""REST routes of SSH keys (Mist v2: /api/v2/keys)."""

from __future__ import annotations

import asyncio
from typing import Any

from controller.http.api import LIST_PARAMS, Ctx, Reply, RouteTable, envelope, one
from controller.http.schema import BOOLEAN, integer, obj, string
from controller.listing import project

routes = RouteTable("keys")

ADD_KEY = obj((), name=string(0, 200), private=string(0, 16_384), certificate=string(0, 16_384),
              generate=BOOLEAN, dry=BOOLEAN, algorithm=string(0, 20, enum=["ed25519", "rsa"]),
              bits=integer(2048, 8192))
EDIT_KEY = obj((), name=string(1, 200), default=BOOLEAN)


@routes.route("GET", "/api/v2/keys", op="list_keys", summary="List SSH keys", params=LIST_PARAMS)
async def list_keys(ctx: Ctx) -> Any:
    return envelope(*await asyncio.to_thread(ctx.services.keys.list_keys, ctx.principal, ctx.query()))


@routes.route("POST", "/api/v2/keys", op="add_key", body=ADD_KEY,
              summary="Add an SSH key: import a private key, or generate one (ed25519; RSA on request)")
async def add_key(ctx: Ctx) -> Any:
    doc = await ctx.services.keys.add(ctx.principal, ctx.actor, ctx.body)
    if doc.get("dry"):
        return one(doc)
    return Reply({"data": doc, "id": doc["id"], "public": doc["public"]}, status=201)


@routes.route("GET", "/api/v2/keys/{key}", op="get_key", params=("private", "only", "deref"),
              summary="Show a key; private=true returns its private half (audited)")
async def get_key(ctx: Ctx) -> Any:
    if ctx.flag("private"):
        return one(ctx.services.keys.private(ctx.principal, ctx.actor, ctx.match("key")))
    return one(project(ctx.services.keys.get(ctx.principal, ctx.match("key")), ctx.query().only))


@routes.route("PUT", "/api/v2/keys/{key}", op="edit_key", body=EDIT_KEY, params=("name", "default"),
              summary="Rename a key, or make it the default")
async def edit_key(ctx: Ctx) -> Any:
    body = ctx.body or {}
    name = body.get("name", ctx.param("name") or None)
    default = body.get("default", ctx.flag("default") if ctx.param("default") else None)
    return one(ctx.services.keys.edit(ctx.principal, ctx.actor, ctx.match("key"), name, default))


@routes.route("DELETE", "/api/v2/keys/{key}", op="delete_key", summary="Delete a key")
async def delete_key(ctx: Ctx) -> Any:
    ctx.services.keys.delete(ctx.principal, ctx.actor, ctx.match("key"))
    return Reply(status=204)


ASSOCIATE = obj(("key",), key=string(1, 200), user=string(0, 32), port=integer(1, 65535),
                sudo=BOOLEAN, machine=string(0, 200), last_used=integer(0), deploy=BOOLEAN)
DISASSOCIATE = obj(("key",), key=string(1, 200), deploy=BOOLEAN)


@routes.route("PUT", "/api/v2/machines/{machine}/actions/associate-key", op="associate_key",
              body=ASSOCIATE, summary="Associate a key with a machine: its public half is added "
              "to the user's authorized_keys (through the agent, or over SSH); deploy=false only "
              "records it")
async def associate_key(ctx: Ctx) -> Any:
    doc = await ctx.services.associations.associate(ctx.principal, ctx.actor,
                                                    ctx.match("machine"), ctx.body or {})
    return one(doc)


@routes.route("DELETE", "/api/v2/machines/{machine}/actions/disassociate-key",
              op="disassociate_key", body=DISASSOCIATE,
              summary="Disassociate a key from a machine: its line is removed from authorized_keys")
async def disassociate_key(ctx: Ctx) -> Any:
    doc = await ctx.services.associations.disassociate(ctx.principal, ctx.actor,
                                                       ctx.match("machine"), ctx.body or {})
    return one(doc)


@routes.route("GET", "/api/v2/machines/{machine}/keys", op="list_machine_keys",
              summary="The keys associated with a machine (user, port, last use)")
async def machine_keys(ctx: Ctx) -> Any:
    data = await asyncio.to_thread(ctx.services.associations.list, ctx.principal,
                                   ctx.match("machine"))
    return {"data": data, "meta": {"total": len(data), "returned": len(data), "start": 0}}
