"""Actions on cloud resources, each run as a job: the request is checked first (the resource
exists in the caller's organisation, the provider supports the action — a 422 that says so
otherwise), then the provider call runs in the background; its outcome is audited with the
user, the resource and the result, and the cloud is polled again at once so the inventory
shows the effect."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from controller.accounts.model import Principal
from controller.clouds.model import cloud_key, doc_key, resource_id
from controller.clouds.providers import registry
from controller.clouds.providers.base import (
    Adapter,
    Capability,
    CreateMachine,
    Unsupported,
)
from controller.clouds.service import CloudService
from controller.errors import Invalid, NotFound
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.jobs.service import JobHandle, JobService
from controller.store.base import Store

MACHINE_VERBS = {"start": Capability.START, "stop": Capability.STOP, "reboot": Capability.REBOOT,
                 "destroy": Capability.DESTROY, "resize": Capability.RESIZE,
                 "rename": Capability.RENAME, "suspend": Capability.SUSPEND,
                 "resume": Capability.RESUME}
MAX_QUANTITY = 100


class ActionService:
    def __init__(self, store: Store, writer: Writer, clouds: CloudService, jobs: JobService) -> None:
        self.store = store
        self.writer = writer
        self.clouds = clouds
        self.jobs = jobs
        self.poke: Callable[[str, str], None] = lambda org, cloud: None  # set by the pollers

    # ---- lookups ---------------------------------------------------------------------------------
    def resource(self, p: Principal, kind: str, rid: str, zone: str = "") -> dict[str, Any]:
        raw = (self.store.get(doc_key(kind, p.org_id, rid, zone))
               if p.org_id and "/" not in rid and "/" not in zone else None)
        if raw is None:
            raise NotFound(f"no such {kind}", {"id": rid})
        doc: dict[str, Any] = json.loads(raw)
        return doc

    def cloud_for(self, p: Principal, doc: dict[str, Any], cap: Capability, what: str) -> dict[str, Any]:
        raw = self.store.get(cloud_key(p.org_id, str(doc.get("cloud", ""))))
        if raw is None:
            raise NotFound("the cloud of this resource is gone")
        cloud = dict(json.loads(raw), org=p.org_id)
        if cloud.get("agents") or "config" not in cloud:
            raise Unsupported(f"{what} is not available for hosts known only through their agent",
                              action=what)
        spec = registry.spec(cloud["provider"])
        if cap not in spec.capabilities:
            raise Unsupported(f"{spec.title} does not support {what}", provider=spec.name, action=what)
        return cloud

    def _external(self, p: Principal, kind: str, cloud: dict[str, Any], value: str, field: str) -> str:
        """A size/image/location/machine given by Overcast id or the provider's id."""
        if not value:
            return ""
        raw = self.store.get(doc_key(kind, p.org_id, value)) if "/" not in value else None
        if raw is not None:
            doc = json.loads(raw)
            if doc.get("cloud") != cloud["id"]:
                raise Invalid(f"{field} {value!r} belongs to another cloud", field=field)
            return str(doc["external_id"])
        if kind == "machine" and self.store.get(
                doc_key("machine", p.org_id, resource_id(cloud["id"], "machine", value))) is None:
            raise Invalid(f"no machine {value!r} in this cloud", field=field)
        return value

    # ---- running ------------------------------------------------------------------------------
    def _launch(self, p: Principal, actor: Actor, cloud: dict[str, Any], action: str,
                target_kind: str, target_id: str, params: dict[str, Any],
                fn: Callable[[Adapter], Any], describe: str, calls: int = 3) -> dict[str, Any]:
        """Run ``fn`` as a job. ``calls``: how many provider calls it may make (an action is
        several: find the machine, act, wait for a resize to settle...), each bounded by
        ``cloud_call_timeout``."""
        job = self.jobs.create(p.org_id, action, target_kind, target_id,
                               p.user.get("email", ""), params)
        timeout = calls * float(self.clouds.settings.cloud_call_timeout)

        async def work(h: JobHandle) -> Any:
            h.progress(f"{describe} on {cloud['name']} ({cloud['provider']})")
            result = await self.clouds.call(cloud, "action", fn, what=describe, timeout=timeout)
            h.progress("done; refreshing the inventory")
            self.poke(p.org_id, cloud["id"])
            return result

        def done(j: dict[str, Any]) -> None:
            ok = j["status"] == "succeeded"
            details = {"job": j["id"], "cloud": cloud["id"], **params}
            if not ok and j.get("error"):
                details["error"] = j["error"].get("message", "")
            self.writer.commit(actor, Change(action, org=p.org_id, target_kind=target_kind,
                                             target_id=target_id,
                                             outcome="success" if ok else "failed", details=details))

        self.jobs.start(job, work, done)
        return job

    # ---- machines -----------------------------------------------------------------------------
    def machine_action(self, p: Principal, actor: Actor, machine_id: str, verb: str,
                       params: dict[str, Any]) -> dict[str, Any]:
        cap = MACHINE_VERBS.get(verb)
        if cap is None:
            raise NotFound(f"no machine action {verb!r}; actions: {', '.join(MACHINE_VERBS)}")
        m = self.resource(p, "machine", machine_id)
        cloud = self.cloud_for(p, m, cap, verb)
        args: dict[str, Any] = {}
        if cap == Capability.RESIZE:
            size = str(params.get("size") or "")
            if not size:
                raise Invalid("resize needs a size", field="size")
            args["size"] = self._external(p, "size", cloud, size, "size")
        if cap == Capability.RENAME:
            name = str(params.get("name") or "").strip()
            if not name:
                raise Invalid("rename needs a name", field="name")
            args["name"] = name
        ext = str(m["external_id"])
        return self._launch(p, actor, cloud, f"machine.{verb}", "machine", m["id"],
                            {"name": m.get("name", ""), **args},
                            lambda a: a.machine_action(cap, ext, args), f"{verb} {m.get('name', '')}")

    def create_machines(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        cloud = self.clouds.find(p, str(body["cloud"]))
        if cloud.get("agents") or "config" not in cloud:
            raise Unsupported("machines are not created in the Agents cloud: enrol an agent",
                              action="create")
        spec = registry.spec(cloud["provider"])
        if Capability.CREATE not in spec.capabilities:
            raise Unsupported(f"{spec.title} does not support creating machines",
                              provider=spec.name, action="create")
        quantity = int(body.get("quantity", 1))
        if not 1 <= quantity <= MAX_QUANTITY:
            raise Invalid(f"quantity must be 1 to {MAX_QUANTITY}", field="quantity")
        name = body["name"].strip()
        if not name:
            raise Invalid("name must not be empty", field="name")
        names = [name] if quantity == 1 else [f"{name}-{i + 1}" for i in range(quantity)]
        req = {"size": self._external(p, "size", cloud, str(body.get("size", "")), "size"),
               "image": self._external(p, "image", cloud, str(body.get("image", "")), "image"),
               "location": self._external(p, "location", cloud, str(body.get("location", "")),
                                          "location")}
        tags = body.get("tags") or {}
        plan = {"cloud": cloud["id"], "provider": cloud["provider"], "names": names, **req,
                "tags": tags, "cloudinit": bool(body.get("cloudinit")), "key": bool(body.get("key"))}
        if body.get("dry"):
            return {"dry": True, "plan": plan}

        def create(a: Adapter) -> list[dict[str, Any]]:
            made = []
            for n in names:
                r = a.create_machine(CreateMachine(
                    name=n, size=req["size"], image=req["image"], location=req["location"],
                    public_key=str(body.get("key") or ""), cloud_init=str(body.get("cloudinit") or ""),
                    tags={str(k): str(v) for k, v in tags.items()}, extra=dict(body.get("extra") or {})))
                made.append({"name": n, "external_id": r.external_id,
                             "id": resource_id(cloud["id"], "machine", r.external_id)})
            return made

        job = self._launch(p, actor, cloud, "machine.create", "cloud", cloud["id"],
                           {"names": names, **req}, create, f"create {len(names)} machine(s)",
                           calls=4 + 2 * len(names))
        return {"dry": False, "job": job, "plan": plan}

    # ---- volumes ---------------------------------------------------------------------------
    def create_volume(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        cloud = self.clouds.find(p, str(body["cloud"]))
        self._cap(cloud, Capability.VOLUMES, "volumes")
        loc = self._external(p, "location", cloud, str(body.get("location", "")), "location")
        name, size = body["name"], int(body["size"])
        return self._launch(p, actor, cloud, "volume.create", "cloud", cloud["id"],
                            {"name": name, "size": size, "location": loc},
                            lambda a: _plain(a.create_volume(name, size, loc, {})),
                            f"create volume {name}")

    def volume_action(self, p: Principal, actor: Actor, volume_id: str, verb: str,
                      body: dict[str, Any]) -> dict[str, Any]:
        v = self.resource(p, "volume", volume_id)
        cap = Capability.ATTACH if verb in ("attach", "detach") else Capability.VOLUMES
        cloud = self.cloud_for(p, v, cap, f"{verb} volumes")
        ext = str(v["external_id"])
        params: dict[str, Any] = {"name": v.get("name", "")}
        mext = device = ""
        if verb != "delete":
            machine = str(body.get("machine") or "")
            if not machine:
                raise Invalid(f"{verb} needs a machine", field="machine")
            mext = self._external(p, "machine", cloud, machine, "machine")
            device = str(body.get("device") or "")
            params["machine"] = machine

        def fn(a: Adapter) -> Any:
            if verb == "delete":
                return a.delete_volume(ext)
            if verb == "attach":
                return a.attach_volume(ext, mext, device)
            return a.detach_volume(ext, mext)

        return self._launch(p, actor, cloud, f"volume.{verb}", "volume", v["id"], params, fn,
                            f"{verb} volume {v.get('name', '')}")

    # ---- networks ----------------------------------------------------------------------------
    def create_network(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        cloud = self.clouds.find(p, str(body["cloud"]))
        self._cap(cloud, Capability.NETWORKS, "networks")
        name, cidr = body["name"], str(body.get("cidr", ""))
        return self._launch(p, actor, cloud, "network.create", "cloud", cloud["id"],
                            {"name": name, "cidr": cidr},
                            lambda a: _plain(a.create_network(name, cidr, {})), f"create network {name}")

    def delete_network(self, p: Principal, actor: Actor, network_id: str) -> dict[str, Any]:
        n = self.resource(p, "network", network_id)
        cloud = self.cloud_for(p, n, Capability.NETWORKS, "deleting networks")
        ext = str(n["external_id"])
        return self._launch(p, actor, cloud, "network.delete", "network", n["id"],
                            {"name": n.get("name", "")}, lambda a: a.delete_network(ext),
                            f"delete network {n.get('name', '')}")

    def create_subnet(self, p: Principal, actor: Actor, network_id: str, body: dict[str, Any]) -> dict[str, Any]:
        n = self.resource(p, "network", network_id)
        cloud = self.cloud_for(p, n, Capability.NETWORKS, "subnets")
        ext = str(n["external_id"])
        name, cidr = str(body.get("name", "")), body["cidr"]
        loc = self._external(p, "location", cloud, str(body.get("location", "")), "location")
        return self._launch(p, actor, cloud, "subnet.create", "network", n["id"],
                            {"name": name, "cidr": cidr},
                            lambda a: _plain(a.create_subnet(ext, name, cidr, loc)), f"create subnet {cidr}")

    def delete_subnet(self, p: Principal, actor: Actor, network_id: str, subnet_id: str) -> dict[str, Any]:
        n = self.resource(p, "network", network_id)
        cloud = self.cloud_for(p, n, Capability.NETWORKS, "subnets")
        if not any(s.get("id") == subnet_id for s in n.get("subnets", [])):
            raise NotFound("no such subnet in this network", {"id": subnet_id})
        ext = str(n["external_id"])
        return self._launch(p, actor, cloud, "subnet.delete", "network", n["id"], {"subnet": subnet_id},
                            lambda a: a.delete_subnet(ext, subnet_id), f"delete subnet {subnet_id}")

    # ---- DNS -----------------------------------------------------------------------------------
    def create_zone(self, p: Principal, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        cloud = self.clouds.find(p, str(body["cloud"]))
        self._cap(cloud, Capability.DNS, "DNS")
        domain, type_, ttl = body["domain"].rstrip("."), body.get("type", "master"), int(body.get("ttl", 3600))
        return self._launch(p, actor, cloud, "zone.create", "cloud", cloud["id"],
                            {"domain": domain}, lambda a: _plain(a.create_zone(domain, type_, ttl)),
                            f"create zone {domain}")

    def delete_zone(self, p: Principal, actor: Actor, zone_id: str) -> dict[str, Any]:
        z = self.resource(p, "zone", zone_id)
        cloud = self.cloud_for(p, z, Capability.DNS, "DNS")
        ext = str(z["external_id"])
        return self._launch(p, actor, cloud, "zone.delete", "zone", z["id"], {"domain": z.get("domain", "")},
                            lambda a: a.delete_zone(ext), f"delete zone {z.get('domain', '')}")

    def create_record(self, p: Principal, actor: Actor, zone_id: str, body: dict[str, Any]) -> dict[str, Any]:
        z = self.resource(p, "zone", zone_id)
        cloud = self.cloud_for(p, z, Capability.DNS, "DNS")
        ext = str(z["external_id"])
        name, type_, data, ttl = body["name"], body["type"].upper(), body["data"], int(body.get("ttl", 3600))
        return self._launch(p, actor, cloud, "record.create", "zone", z["id"],
                            {"name": name, "type": type_, "data": data},
                            lambda a: _plain(a.create_record(ext, name, type_, data, ttl)),
                            f"create {type_} record {name}")

    def delete_record(self, p: Principal, actor: Actor, zone_id: str, record_id: str) -> dict[str, Any]:
        z = self.resource(p, "zone", zone_id)
        r = self.resource(p, "record", record_id, zone=z["id"])
        cloud = self.cloud_for(p, z, Capability.DNS, "DNS")
        zext, rext = str(z["external_id"]), str(r["external_id"])
        return self._launch(p, actor, cloud, "record.delete", "record", r["id"],
                            {"name": r.get("name", ""), "type": r.get("type", "")},
                            lambda a: a.delete_record(zext, rext), f"delete record {r.get('name', '')}")

    def update_record(self, p: Principal, actor: Actor, zone_id: str, record_id: str,
                      body: dict[str, Any]) -> dict[str, Any]:
        z = self.resource(p, "zone", zone_id)
        r = self.resource(p, "record", record_id, zone=z["id"])
        cloud = self.cloud_for(p, z, Capability.DNS, "DNS")
        zext, rext = str(z["external_id"]), str(r["external_id"])
        name = str(body.get("name", r.get("name", "")))
        type_ = str(body.get("type", r.get("type", ""))).upper()
        data = str(body.get("data", (r.get("rdata") or [""])[0]))
        ttl = int(body.get("ttl", r.get("ttl") or 3600))
        return self._launch(p, actor, cloud, "record.edit", "record", r["id"],
                            {"name": name, "type": type_, "data": data, "ttl": ttl},
                            lambda a: _plain(a.update_record(zext, rext, name, type_, data, ttl)),
                            f"change {type_} record {name}")

    @staticmethod
    def _cap(cloud: dict[str, Any], cap: Capability, what: str) -> None:
        if cloud.get("agents") or "config" not in cloud:
            raise Unsupported(f"the Agents cloud has no {what}", action=what)
        spec = registry.spec(cloud["provider"])
        if cap not in spec.capabilities:
            raise Unsupported(f"{spec.title} does not support {what}", provider=spec.name, action=what)


def _plain(record: Any) -> dict[str, Any]:
    """A provider record as a job result."""
    from dataclasses import asdict

    out: dict[str, Any] = asdict(record)
    return out
