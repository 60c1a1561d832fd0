"""REST routes of clouds and what they hold (Mist v2 paths): clouds, providers, machine
actions and creation, volumes, networks, zones and records, sizes, images, locations, tags
and costs. Actions answer 202 with the job that runs them."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from controller.clouds.providers import registry
from controller.clouds.resources import LISTED
from controller.http.api import LIST_PARAMS, Ctx, Reply, RouteTable, envelope, one
from controller.http.schema import BOOLEAN, integer, obj, string
from controller.listing import apply, project

routes = RouteTable("clouds")
inventory = RouteTable("inventory")

OBJECT: dict[str, Any] = {"type": "object"}
TAGS: dict[str, Any] = {"type": "object", "description": "key -> value"}

ADD_CLOUD = obj(("name", "provider"), name=string(1, 100), provider=string(1, 40),
                credentials=OBJECT, features=OBJECT, enabled=BOOLEAN,
                poll_interval=integer(5, 86400), tags=TAGS)
EDIT_CLOUD = obj((), name=string(1, 100), provider=string(1, 40), credentials=OBJECT,
                 features=OBJECT, enabled=BOOLEAN, poll_interval=integer(5, 86400), tags=TAGS)


def _job_reply(job: dict[str, Any]) -> Reply:
    return Reply({"data": job, "job_id": job["id"], "jobId": job["id"]}, status=202)


# ---- clouds --------------------------------------------------------------------------------------
@routes.route("GET", "/api/v2/providers", op="list_providers",
              summary="Providers: their credential fields, capabilities and how they are proved")
async def list_providers(ctx: Ctx) -> Any:
    def specs() -> list[dict[str, Any]]:
        out = []
        for name in registry.PROVIDERS:
            s = registry.spec(name)
            out.append({"provider": s.name, "title": s.title, "proved": s.proved,
                        "capabilities": sorted(s.capabilities),
                        "fields": [{"name": f.name, "required": f.required, "secret": f.secret,
                                    "type": f.kind, "help": f.help, "default": f.default,
                                    "choices": list(f.choices)} for f in s.fields]})
        return out
    return {"data": await asyncio.to_thread(specs)}


@routes.route("GET", "/api/v2/clouds", op="list_clouds", summary="List clouds", params=LIST_PARAMS)
async def list_clouds(ctx: Ctx) -> Any:
    return envelope(*await asyncio.to_thread(ctx.services.clouds.list_clouds, ctx.principal, ctx.query()))


@routes.route("POST", "/api/v2/clouds", op="add_cloud", body=ADD_CLOUD,
              summary="Add a cloud (its credentials are checked at the provider first)")
async def add_cloud(ctx: Ctx) -> Any:
    doc = await ctx.services.clouds.add(ctx.principal, ctx.actor, ctx.body)
    return Reply({"data": doc, "id": doc["id"]}, status=201)


@routes.route("GET", "/api/v2/clouds/{cloud}", op="get_cloud", summary="Show a cloud", params=("only", "deref"))
async def get_cloud(ctx: Ctx) -> Any:
    doc = await asyncio.to_thread(ctx.services.clouds.get, ctx.principal, ctx.match("cloud"))
    return one(project(doc, ctx.query().only))


@routes.route("PUT", "/api/v2/clouds/{cloud}", op="edit_cloud", body=EDIT_CLOUD,
              summary="Edit a cloud: rename, new credentials (checked), features, polling")
async def edit_cloud(ctx: Ctx) -> Any:
    return one(await ctx.services.clouds.edit(ctx.principal, ctx.actor, ctx.match("cloud"), ctx.body))


@routes.route("DELETE", "/api/v2/clouds/{cloud}", op="remove_cloud",
              summary="Remove a cloud from Overcast (nothing is changed at the provider)")
async def remove_cloud(ctx: Ctx) -> Any:
    counts = await asyncio.to_thread(ctx.services.clouds.remove, ctx.principal, ctx.actor,
                                     ctx.match("cloud"))
    return {"data": {"forgotten": counts}}


@routes.route("POST", "/api/v2/clouds/{cloud}/actions/poll", op="poll_cloud",
              summary="Poll a cloud now; answers with its poll status")
async def poll_cloud(ctx: Ctx) -> Any:
    c = ctx.services.clouds.find(ctx.principal, ctx.match("cloud"))
    if c.get("agents") or "config" not in c:
        return one({"state": "ok", "note": "agents report by themselves"})
    return one(await ctx.services.pollers.poll_now(ctx.principal.org_id, c["id"]))


# ---- machines: create and actions --------------------------------------------------------------
CREATE_MACHINE = obj(("cloud", "name"), cloud=string(1, 100), name=string(1, 200),
                     size=string(0, 200), image=string(0, 500), location=string(0, 200),
                     key=string(0, 16_384, description="OpenSSH public key to install"),
                     cloudinit=string(0, 65_536), tags=TAGS, quantity=integer(1, 100),
                     dry=BOOLEAN, provider=string(0, 40), extra=OBJECT)


@inventory.route("POST", "/api/v2/machines", op="create_machine", body=CREATE_MACHINE,
                 summary="Create machines (a job; dry: check and show the plan only)")
async def create_machine(ctx: Ctx) -> Any:
    r = ctx.services.actions.create_machines(ctx.principal, ctx.actor, ctx.body)
    if r["dry"]:
        return one(r)
    return Reply({"data": r["job"], "job_id": r["job"]["id"], "jobId": r["job"]["id"],
                  "plan": r["plan"]}, status=202)


MACHINE_ACTION = obj((), size=string(1, 200), name=string(1, 200))

for _verb in ("start", "stop", "reboot", "destroy", "resize", "rename", "suspend", "resume"):
    def _make(verb: str) -> Any:
        async def machine_action(ctx: Ctx) -> Any:
            job = ctx.services.actions.machine_action(ctx.principal, ctx.actor, ctx.match("machine"),
                                                      verb, ctx.body or {})
            return _job_reply(job)
        machine_action.__name__ = f"{verb}_machine"
        return machine_action

    inventory.route("POST", f"/api/v2/machines/{{machine}}/actions/{_verb}", op=f"{_verb}_machine",
                    body=MACHINE_ACTION, summary=f"{_verb.capitalize()} a machine (a job)")(_make(_verb))


# ---- inventory lists -------------------------------------------------------------------------------
def _list_route(kind: str) -> None:
    plural = f"{kind}s"

    async def list_kind(ctx: Ctx) -> Any:
        return envelope(*await asyncio.to_thread(ctx.services.resources.list_resources, ctx.principal,
                                                 kind, ctx.query(), ctx.param("cloud")))

    async def get_kind(ctx: Ctx) -> Any:
        doc = ctx.services.resources.get(ctx.principal, kind, ctx.match(kind))
        return one(project(doc, ctx.query().only))

    inventory.route("GET", f"/api/v2/{plural}", op=f"list_{plural}", summary=f"List {plural}",
                    params=(*LIST_PARAMS, "cloud"))(list_kind)
    inventory.route("GET", f"/api/v2/{plural}/{{{kind}}}", op=f"get_{kind}",
                    summary=f"Show a {kind}", params=("only", "deref"))(get_kind)


for _kind in LISTED:
    _list_route(_kind)


# ---- volumes ------------------------------------------------------------------------------------------
CREATE_VOLUME = obj(("cloud", "name", "size"), cloud=string(1, 100), name=string(1, 200),
                    size=integer(1, 65_536), location=string(0, 200))
VOLUME_ATTACH = obj(("machine",), machine=string(1, 200), device=string(0, 64))


@inventory.route("POST", "/api/v2/volumes", op="create_volume", body=CREATE_VOLUME,
                 summary="Create a volume (a job)")
async def create_volume(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.create_volume(ctx.principal, ctx.actor, ctx.body))


@inventory.route("DELETE", "/api/v2/volumes/{volume}", op="delete_volume", summary="Delete a volume (a job)")
async def delete_volume(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.volume_action(ctx.principal, ctx.actor, ctx.match("volume"),
                                                         "delete", {}))


@inventory.route("POST", "/api/v2/volumes/{volume}/actions/attach", op="attach_volume",
                 body=VOLUME_ATTACH, summary="Attach a volume to a machine (a job)")
async def attach_volume(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.volume_action(ctx.principal, ctx.actor, ctx.match("volume"),
                                                         "attach", ctx.body))


@inventory.route("POST", "/api/v2/volumes/{volume}/actions/detach", op="detach_volume",
                 body=VOLUME_ATTACH, summary="Detach a volume from a machine (a job)")
async def detach_volume(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.volume_action(ctx.principal, ctx.actor, ctx.match("volume"),
                                                         "detach", ctx.body))


# ---- networks -----------------------------------------------------------------------------------------
CIDR = string(0, 64, description="e.g. 10.0.0.0/16")
CREATE_NETWORK = obj(("cloud", "name"), cloud=string(1, 100), name=string(1, 200), cidr=CIDR)
CREATE_SUBNET = obj(("cidr",), name=string(0, 200), cidr=string(1, 64), location=string(0, 200))


@inventory.route("POST", "/api/v2/networks", op="create_network", body=CREATE_NETWORK,
                 summary="Create a network (a job)")
async def create_network(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.create_network(ctx.principal, ctx.actor, ctx.body))


@inventory.route("DELETE", "/api/v2/networks/{network}", op="delete_network",
                 summary="Delete a network (a job)")
async def delete_network(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.delete_network(ctx.principal, ctx.actor, ctx.match("network")))


@inventory.route("POST", "/api/v2/networks/{network}/subnets", op="create_subnet", body=CREATE_SUBNET,
                 summary="Create a subnet in a network (a job)")
async def create_subnet(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.create_subnet(ctx.principal, ctx.actor, ctx.match("network"),
                                                         ctx.body))


@inventory.route("DELETE", "/api/v2/networks/{network}/subnets/{subnet}", op="delete_subnet",
                 summary="Delete a subnet (a job)")
async def delete_subnet(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.delete_subnet(ctx.principal, ctx.actor, ctx.match("network"),
                                                         ctx.match("subnet")))


# ---- DNS ----------------------------------------------------------------------------------------------
CREATE_ZONE = obj(("cloud", "domain"), cloud=string(1, 100), domain=string(1, 253),
                  type=string(0, 20, enum=["master", "slave"]), ttl=integer(1, 604_800))
CREATE_RECORD = obj(("name", "type", "data"), name=string(0, 253),
                    type=string(1, 10, enum=["A", "AAAA", "CNAME", "MX", "TXT", "NS", "SRV", "CAA",
                                             "PTR", "SPF"]),
                    data=string(1, 4000), ttl=integer(1, 604_800))


@inventory.route("POST", "/api/v2/zones", op="create_zone", body=CREATE_ZONE, summary="Create a DNS zone (a job)")
async def create_zone(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.create_zone(ctx.principal, ctx.actor, ctx.body))


@inventory.route("DELETE", "/api/v2/zones/{zone}", op="delete_zone", summary="Delete a DNS zone (a job)")
async def delete_zone(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.delete_zone(ctx.principal, ctx.actor, ctx.match("zone")))


@inventory.route("GET", "/api/v2/zones/{zone}/records", op="list_records", summary="List a zone's records",
                 params=LIST_PARAMS)
async def list_records(ctx: Ctx) -> Any:
    z = ctx.services.resources.get(ctx.principal, "zone", ctx.match("zone"))
    return envelope(*await asyncio.to_thread(ctx.services.resources.list_resources, ctx.principal,
                                             "record", ctx.query(), "", z["id"]))


@inventory.route("POST", "/api/v2/zones/{zone}/records", op="create_record", body=CREATE_RECORD,
                 summary="Create a DNS record (a job)")
async def create_record(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.create_record(ctx.principal, ctx.actor, ctx.match("zone"),
                                                         ctx.body))


@inventory.route("GET", "/api/v2/zones/{zone}/records/{record}", op="get_record", summary="Show a DNS record")
async def get_record(ctx: Ctx) -> Any:
    return one(ctx.services.resources.get(ctx.principal, "record", ctx.match("record"), ctx.match("zone")))


@inventory.route("DELETE", "/api/v2/zones/{zone}/records/{record}", op="delete_record",
                 summary="Delete a DNS record (a job)")
async def delete_record(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.delete_record(ctx.principal, ctx.actor, ctx.match("zone"),
                                                         ctx.match("record")))


EDIT_RECORD = obj((), name=string(0, 253), type=CREATE_RECORD["properties"]["type"],
                  data=string(1, 4000), ttl=integer(1, 604_800))
RENAME = obj((), name=string(0, 200))


@inventory.route("PUT", "/api/v2/zones/{zone}/records/{record}", op="edit_record", body=EDIT_RECORD,
                 summary="Change a DNS record's data, TTL, name or type (a job)")
async def edit_record(ctx: Ctx) -> Any:
    return _job_reply(ctx.services.actions.update_record(ctx.principal, ctx.actor, ctx.match("zone"),
                                                         ctx.match("record"), ctx.body))


def _rename_route(kind: str) -> None:
    async def edit_kind(ctx: Ctx) -> Any:
        # Mist sends the new name as a query parameter; a JSON body works too
        name = (ctx.body or {}).get("name", ctx.param("name"))
        return one(await asyncio.to_thread(ctx.services.resources.rename, ctx.principal, ctx.actor,
                                           kind, ctx.match(kind), name))

    inventory.route("PUT", f"/api/v2/{kind}s/{{{kind}}}", op=f"edit_{kind}", body=RENAME,
                    params=("name",),
                    summary=f"Rename a {kind} in Overcast (the provider's name is kept)")(edit_kind)


for _kind in ("volume", "network", "zone"):
    _rename_route(_kind)


# ---- tags and costs -------------------------------------------------------------------------------
TAG_OPS = obj(("operations",), operations={
    "type": "array", "maxItems": 100,
    "items": obj(("operation", "resources", "tags"), operation=string(1, 10, enum=["add", "remove"]),
                 resources={"type": "array", "maxItems": 1000,
                            "items": obj(("resource_type", "resource_id"), resource_type=string(1, 40),
                                         resource_id=string(1, 200))},
                 tags={"type": "array", "maxItems": 100,
                       "items": obj(("key",), key=string(1, 64),
                                    value={"oneOf": [{"type": "string"}, {"type": "null"}]})})})


@inventory.route("POST", "/api/v2/tags", op="tag_resources", body=TAG_OPS,
                 summary="Add or remove tags on resources (all operations or none)")
async def tag_resources(ctx: Ctx) -> Any:
    return one(await asyncio.to_thread(ctx.services.resources.tag, ctx.principal, ctx.actor,
                                       ctx.body["operations"]))


@inventory.route("GET", "/api/v2/tags", op="list_tags", summary="Tags in use, with counts per resource type",
                 params=("types", "search", "sort", "start", "limit", "only"))
async def list_tags(ctx: Ctx) -> Any:
    q = ctx.query()
    tags = await asyncio.to_thread(ctx.services.resources.list_tags, ctx.principal,
                                   ctx.param("types"), ctx.param("search"))
    return envelope(*apply(tags, replace(q, search=None)))


@inventory.route("GET", "/api/v2/costs", op="get_costs",
                 summary="Estimated costs: totals for the organisation, per cloud, and per value of a tag",
                 params=("tag",))
async def get_costs(ctx: Ctx) -> Any:
    return one(await asyncio.to_thread(ctx.services.resources.costs, ctx.principal, ctx.param("tag")))

