"""Reading the inventory (volumes, networks, zones, records, sizes, images, locations) across
all clouds of an organisation, tags on every resource, and cost totals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from controller.accounts.model import Principal
from controller.agents.service import TAG_KEY_CHARS
from controller.clouds.costs import machine_cost, totals
from controller.clouds.model import CLOUD, cloud_key, doc_key, view
from controller.clouds.providers import registry
from controller.errors import Invalid, NotFound
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.listing import Query, Search, apply, parse_search
from controller.machines.model import view as machine_view
from controller.store.base import Store
from controller.store.docs import load

LISTED = ("volume", "network", "zone", "size", "image", "location")
TAGGABLE = ("machine", "cloud", "volume", "network", "zone", "record", "image")
MAX_TAG_RESOURCES = 1000


class ResourceService:
    def __init__(self, store: Store, writer: Writer) -> None:
        self.store = store
        self.writer = writer

    def _docs(self, p: Principal, kind: str, zone: str = "") -> Iterator[dict[str, Any]]:
        prefix = f"record/{p.org_id}/{zone}/" if kind == "record" else f"{kind}/{p.org_id}/"
        for _, raw in self.store.scan(prefix):
            yield view(kind, json.loads(raw))

    def list_resources(self, p: Principal, kind: str, query: Query, cloud: str = "",
             zone: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
        docs: Iterator[dict[str, Any]] = self._docs(p, kind, zone)
        if cloud:
            ids = self.cloud_ids(p, cloud)
            docs = (d for d in docs if d.get("cloud") in ids)
        return apply(docs, query)

    def cloud_ids(self, p: Principal, cloud: str) -> set[str]:
        """Mist's ``cloud`` filter: an id or a name."""
        out = set()
        for _, raw in self.store.scan(f"cloud/{p.org_id}/"):
            d = json.loads(raw)
            if cloud in (d.get("id"), d.get("name")):
                out.add(d["id"])
        return out

    def get(self, p: Principal, kind: str, rid: str, zone: str = "") -> dict[str, Any]:
        raw = (self.store.get(doc_key(kind, p.org_id, rid, zone))
               if p.org_id and "/" not in rid and "/" not in zone else None)
        if raw is None:
            raise NotFound(f"no such {kind}", {"id": rid})
        return view(kind, json.loads(raw))

    def rename(self, p: Principal, actor: Actor, kind: str, rid: str, name: str) -> dict[str, Any]:
        """Mist's edit_volume/edit_network/edit_zone: the name Overcast shows (the provider's
        own name is kept in ``provider_name``; an empty name goes back to it)."""
        key = doc_key(kind, p.org_id, rid) if p.org_id and "/" not in rid else ""
        raw = self.store.get(key) if key else None
        if raw is None:
            raise NotFound(f"no such {kind}", {"id": rid})
        name = name.strip()
        if len(name) > 200:
            raise Invalid("name must have at most 200 characters", field="name")
        doc = json.loads(raw)
        provider_name = doc.get("provider_name") or doc.get("name", "")
        new = dict(doc, provider_name=provider_name, _user_name=name, name=name or provider_name)
        change = Change(f"{kind}.edit", org=p.org_id, target_kind=kind, target_id=rid,
                        details={"name": {"from": doc.get("name", ""), "to": new["name"]}})
        change.put(key, json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode())
        change.expect(key, raw).event("changed", kind, rid, {"name": new["name"]})
        self.writer.commit(actor, change)
        return view(kind, new)

    # ---- tags ----------------------------------------------------------------------------------
    def tag(self, p: Principal, actor: Actor, operations: list[dict[str, Any]]) -> dict[str, int]:
        """Mist's tag_resources: add or remove tags on resources of any taggable kind. All
        operations are checked first; then they are stored in one batch (all or nothing)."""
        staged: dict[str, dict[str, Any]] = {}
        originals: dict[str, bytes] = {}
        changes: list[Change] = []
        n = 0
        for i, op in enumerate(operations):
            tags = {}
            for t in op.get("tags", []):
                k, v = str(t.get("key", "")), t.get("value")
                if not k or not set(k) <= TAG_KEY_CHARS or len(k) > 64:
                    raise Invalid(f"operations[{i}]: bad tag key {k!r}: letters, digits and _.-/",
                                  field=f"operations.{i}.tags")
                tags[k] = "" if v is None else str(v)[:256]
            for r in op.get("resources", []):
                n += 1
                if n > MAX_TAG_RESOURCES:
                    raise Invalid(f"at most {MAX_TAG_RESOURCES} resources per request", field="operations")
                kind, rid = str(r.get("resource_type", "")).rstrip("s"), str(r.get("resource_id", ""))
                if kind not in TAGGABLE:
                    raise Invalid(f"resources of type {kind!r} have no tags here; types: "
                                  f"{', '.join(TAGGABLE)}", field=f"operations.{i}.resources")
                key = self._find_key(p, kind, rid)
                if key not in staged:
                    raw = self.store.get(key)
                    assert raw is not None
                    originals[key] = raw
                    staged[key] = json.loads(raw)
                doc = staged[key]
                # a cloud's tags are all its users' (older cloud documents kept them in "tags")
                base = doc.get("_user_tags", doc.get("tags", {}) if kind == "cloud" else {})
                user = dict(base or {})
                if op["operation"] == "add":
                    user.update(tags)
                else:
                    for k in tags:
                        user.pop(k, None)
                doc["_user_tags"] = user
                doc["tags"] = {**doc.get("provider_tags", {}), **user} if kind != "cloud" else user
                if kind == "machine":
                    doc["cost"] = machine_cost(doc, self._stopped_is_free(p, doc))
                changes.append(Change(f"{kind}.tag", org=p.org_id, target_kind=kind, target_id=doc["id"],
                                      details={"operation": op["operation"], "tags": tags})
                               .event("changed", kind, doc["id"], {"tags": doc["tags"]}))
        if changes:
            for key, doc in staged.items():
                changes[-1].put(key, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
                changes[-1].expect(key, originals[key])
            self.writer.commit_many(actor, changes)
        return {"resources": len(changes)}

    def _stopped_is_free(self, p: Principal, doc: dict[str, Any]) -> bool:
        raw = self.store.get(cloud_key(p.org_id, str(doc.get("cloud", ""))))
        if raw is None:
            return True
        c = load(CLOUD, raw)
        if c.get("agents") or "config" not in c:
            return True
        return registry.spec(c["provider"]).stopped_is_free

    def _find_key(self, p: Principal, kind: str, rid: str) -> str:
        if p.org_id and rid and "/" not in rid:
            if kind == "record":
                for k, _ in self.store.scan(f"record/{p.org_id}/", keys_only=True):
                    if k.endswith("/" + rid):
                        return k
            else:
                key = cloud_key(p.org_id, rid) if kind == "cloud" else doc_key(kind, p.org_id, rid)
                if self.store.get(key) is not None:
                    return key
        raise NotFound(f"no such {kind}", {"id": rid, "resource_type": kind})

    def list_tags(self, p: Principal, types: str, search: str) -> list[dict[str, Any]]:
        """Every (key, value) in use with how many resources of each type carry it."""
        kinds = TAGGABLE if types in ("", "all") else tuple(
            t.strip().rstrip("s") for t in types.split(",") if t.strip())
        for k in kinds:
            if k not in TAGGABLE:
                raise Invalid(f"unknown type {k!r}; types: {', '.join(TAGGABLE)}", field="types")
        flt: Search | None = parse_search(search) if search else None
        found: dict[tuple[str, str], dict[str, int]] = {}
        for kind in kinds:
            prefix = f"cloud/{p.org_id}/" if kind == "cloud" else f"{kind}/{p.org_id}/"
            for _, raw in self.store.scan(prefix):
                for k, v in (json.loads(raw).get("tags") or {}).items():
                    counts = found.setdefault((k, str(v)), {})
                    counts[kind] = counts.get(kind, 0) + 1
        out = [{"key": k, "value": v, "resources": counts, "count": sum(counts.values())}
               for (k, v), counts in sorted(found.items())]
        return [t for t in out if flt is None or flt.matches(t)]

    # ---- costs ---------------------------------------------------------------------------------
    def costs(self, p: Principal, tag: str = "") -> dict[str, Any]:
        machines = [dict(machine_view(json.loads(raw)), org=p.org_id)
                    for _, raw in self.store.scan(f"machine/{p.org_id}/")]
        org = totals(machines, "org").get(p.org_id, {"hourly": 0.0, "monthly": 0.0, "machines": 0,
                                                      "unknown": 0, "currency": "USD"})
        names = {json.loads(raw)["id"]: json.loads(raw).get("name", "")
                 for _, raw in self.store.scan(f"cloud/{p.org_id}/")}
        per_cloud = totals(machines, "cloud")
        out: dict[str, Any] = {"org": org,
                               "clouds": [dict(v, id=k, name=names.get(k, "")) for k, v in per_cloud.items()]}
        if tag:
            out["tag"] = tag
            out["tags"] = [dict(v, value=k) for k, v in totals(machines, f"tag:{tag}").items()]
        return out
