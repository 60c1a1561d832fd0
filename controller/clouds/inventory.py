"""Diff a poll's snapshot against the store: new, changed and missing resources become
audited changes ("detected by polling") with live events; unchanged ones cost a comparison
and no write. Nothing is deleted silently: a resource the provider no longer lists gets
``missing_since`` (catalogue kinds — sizes, images, locations — are simply replaced)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from controller.clouds.costs import machine_cost
from controller.clouds.model import AUDITED, doc_key, index_prefix, resource_id
from controller.clouds.providers.base import (
    DnsRecord,
    ImageRecord,
    LocationRecord,
    MachineRecord,
    NetworkRecord,
    SizeRecord,
    VolumeRecord,
    ZoneRecord,
)
from controller.events.writer import Change
from controller.store.base import Batch, Store
from controller.timeutil import iso, parse_iso

# fields whose change is audited and announced; the rest are refreshed quietly
TRACKED = {
    "machine": ("name", "state", "public_ips", "private_ips", "size", "image", "location",
                "provider_tags", "parent", "children", "hostname"),
    "volume": ("name", "size", "state", "attached_to", "provider_tags", "location"),
    "network": ("name", "cidr", "subnets", "provider_tags"),
    "zone": ("domain", "type", "ttl"),
    "record": ("name", "type", "rdata", "ttl"),
}
_LAST_SEEN_EVERY = 300.0  # refresh an unchanged resource's last_seen at most this often
# a machine linked to an agent keeps the agent's value of these when the provider has none
# (``links.link_agents`` fills them so)
AGENT_FILLS = ("hostname", "os_type", "cores")


@dataclass
class Snapshot:
    """What one poll found; ``None`` for a kind that was not polled this time."""

    machines: list[MachineRecord] | None = None
    volumes: list[VolumeRecord] | None = None
    networks: list[NetworkRecord] | None = None
    zones: list[ZoneRecord] | None = None
    records: dict[str, list[DnsRecord]] | None = None  # zone external id -> its records
    sizes: list[SizeRecord] | None = None
    images: list[ImageRecord] | None = None
    locations: list[LocationRecord] | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    changes: list[Change] = field(default_factory=list)  # audited, one entry each
    quiet: Batch = field(default_factory=Batch)           # refreshed without an audit entry
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # every document written, with the bytes it was read as: the write is refused (Conflict)
    # when anything else (a tag, a link) changed one of them meanwhile, and the poll redoes
    # its diff instead of overwriting that change
    expect: dict[str, bytes | None] = field(default_factory=dict)

    def batch(self) -> Batch:
        """The quiet writes with every expectation: for the first change, or alone."""
        b = Batch(dict(self.quiet.puts), set(self.quiet.deletes), dict(self.expect))
        return b


def _machine(cloud: dict[str, Any], r: MachineRecord) -> dict[str, Any]:
    cid = cloud["id"]
    return {"external_id": r.external_id, "name": r.name, "state": r.state,
            "public_ips": r.public_ips, "private_ips": r.private_ips, "hostname": r.hostname,
            "size": r.size, "image": r.image, "location": r.location, "os_type": r.os_type,
            "cores": r.cores, "created": r.created, "provider_tags": r.tags,
            "price_per_hour": r.price_per_hour, "macs": r.macs, "extra": r.extra,
            "parent": resource_id(cid, "machine", r.parent) if r.parent else "", "children": []}


def _volume(cloud: dict[str, Any], r: VolumeRecord) -> dict[str, Any]:
    return {"external_id": r.external_id, "name": r.name, "size": r.size_gb, "state": r.state,
            "location": r.location, "provider_tags": r.tags, "extra": r.extra,
            "attached_to": sorted(resource_id(cloud["id"], "machine", m) for m in r.attached_to)}


def _network(cloud: dict[str, Any], r: NetworkRecord) -> dict[str, Any]:
    return {"external_id": r.external_id, "name": r.name, "cidr": r.cidr, "location": r.location,
            "provider_tags": r.tags, "extra": r.extra,
            "subnets": [{"id": s.external_id, "name": s.name, "cidr": s.cidr, "location": s.location}
                        for s in r.subnets]}


def _zone(cloud: dict[str, Any], r: ZoneRecord) -> dict[str, Any]:
    return {"external_id": r.external_id, "domain": r.domain, "name": r.domain, "type": r.type,
            "ttl": r.ttl, "extra": r.extra}


def _record(cloud: dict[str, Any], r: DnsRecord) -> dict[str, Any]:
    return {"external_id": r.external_id, "name": r.name, "type": r.type, "rdata": [r.data],
            "ttl": r.ttl, "extra": r.extra,
            "zone": resource_id(cloud["id"], "zone", r.zone)}


def _size(cloud: dict[str, Any], r: SizeRecord) -> dict[str, Any]:
    hourly = r.price_per_hour
    return {"external_id": r.external_id, "name": r.name, "cpus": r.cpus, "ram": r.ram_mb,
            "disk": r.disk_gb, "extra": r.extra,
            "cost": {"hourly": hourly, "monthly": round(hourly * 730, 4), "currency": "USD"}
            if hourly else {}}


def _image(cloud: dict[str, Any], r: ImageRecord) -> dict[str, Any]:
    return {"external_id": r.external_id, "name": r.name, "os_type": r.os_type, "extra": r.extra}


def _location(cloud: dict[str, Any], r: LocationRecord) -> dict[str, Any]:
    return {"external_id": r.external_id, "name": r.name, "country": r.country, "extra": r.extra}


def reconcile(store: Store, cloud: dict[str, Any], snap: Snapshot, stopped_is_free: bool = True,
              now: float | None = None) -> Outcome:
    """The changes that bring the store in line with ``snap`` for one cloud."""
    now = time.time() if now is None else now
    out = Outcome()
    if snap.machines is not None:
        docs = {resource_id(cloud["id"], "machine", r.external_id): _machine(cloud, r)
                for r in snap.machines}
        for rid, d in docs.items():  # the tree: hosts list their guests
            parent = docs.get(d["parent"])
            if parent is not None:
                parent["children"].append(rid)
        for d in docs.values():
            d["children"].sort()
        _sync(store, cloud, "machine", docs, out, now, stopped_is_free)
    plain: tuple[tuple[str, Any, Any], ...] = (("volume", snap.volumes, _volume), ("network", snap.networks, _network),
             ("zone", snap.zones, _zone), ("size", snap.sizes, _size),
             ("image", snap.images, _image), ("location", snap.locations, _location))
    for kind, records, convert in plain:
        if records is not None:
            docs = {resource_id(cloud["id"], kind, r.external_id): convert(cloud, r)
                    for r in records}
            _sync(store, cloud, kind, docs, out, now, stopped_is_free)
    if snap.records is not None:
        docs = {resource_id(cloud["id"], "record", f"{zone}/{r.external_id}"): _record(cloud, r)
                for zone, rs in snap.records.items() for r in rs}
        _sync(store, cloud, "record", docs, out, now, stopped_is_free,
              only_zones={resource_id(cloud["id"], "zone", z) for z in snap.records})
    return out


def _sync(store: Store, cloud: dict[str, Any], kind: str, docs: dict[str, dict[str, Any]],
          out: Outcome, now: float, stopped_is_free: bool,
          only_zones: set[str] | None = None) -> None:
    org, cid = cloud["org"], cloud["id"]
    counts = out.counts.setdefault(kind, {"new": 0, "changed": 0, "missing": 0, "total": len(docs)})
    audited = kind in AUDITED
    prefix = index_prefix(org, cid, kind)
    known: dict[str, str] = {}  # rid -> store key, from the cloud's index
    for k, v in store.scan(prefix):
        known[k[len(prefix):]] = v.decode() or doc_key(kind, org, k[len(prefix):])
    stamp = iso(now)
    for rid, fresh in docs.items():
        key = known.get(rid, doc_key(kind, org, rid, fresh.get("zone", "")))
        raw = store.get(key)
        out.expect[key] = raw
        old = json.loads(raw) if raw is not None else None
        if old is not None and not fresh.get("created"):
            fresh = dict(fresh, created=old.get("created", ""))
        doc = dict(old or {}, **fresh)
        doc.update(id=rid, org=org, cloud=cid, provider=cloud["provider"])
        if kind == "machine" and old is not None and old.get("agent"):
            # linked to an agent: what the provider leaves empty, the agent's facts fill (as
            # linking did), not a change to audit and undo at every poll
            facts = old.get("agent_facts") or {}
            for f in AGENT_FILLS:
                if not doc.get(f) and facts.get(f):
                    doc[f] = facts[f]
        if old is not None and old.get("_user_name"):
            doc["provider_name"] = fresh.get("name", "")
            doc["name"] = old["_user_name"]  # named in Overcast (PUT): the label stays
        if kind in ("machine", "volume", "network", "zone", "record", "image"):
            doc["tags"] = {**fresh.get("provider_tags", {}), **(old or {}).get("_user_tags", {})}
        if kind == "machine":
            doc["cost"] = machine_cost(dict(doc, missing_since=""), stopped_is_free)
        if old is None:
            doc.update(created=fresh.get("created") or stamp, last_seen=stamp, missing_since="")
            counts["new"] += 1
            if audited:
                out.changes.append(_change(kind, "detected", cloud, rid, doc, {})
                                   .put(key, _dump(doc)).put(prefix + rid, key.encode()))
            else:
                out.quiet.put(key, _dump(doc))
                out.quiet.put(prefix + rid, key.encode())
            continue
        diff = {f: {"from": old.get(f), "to": doc.get(f)} for f in TRACKED.get(kind, ())
                if old.get(f) != doc.get(f)}
        if old.get("missing_since"):
            diff["missing_since"] = {"from": old["missing_since"], "to": ""}
            doc["missing_since"] = ""
        if diff and audited:
            doc["last_seen"] = stamp
            counts["changed"] += 1
            out.changes.append(_change(kind, "changed", cloud, rid, doc, diff).put(key, _dump(doc)))
        elif doc != old or now - _epoch(old.get("last_seen", "")) > _LAST_SEEN_EVERY:
            doc["last_seen"] = stamp
            if diff:
                counts["changed"] += 1
            out.quiet.put(key, _dump(doc))
    for rid, key in known.items():
        if rid in docs:
            continue
        if only_zones is not None and not any(key.startswith(f"record/{org}/{z}/") for z in only_zones):
            continue
        raw = store.get(key)
        out.expect[key] = raw
        if raw is None:
            out.quiet.delete(prefix + rid)
            continue
        old = json.loads(raw)
        if not audited:
            out.quiet.delete(key)
            out.quiet.delete(prefix + rid)
            continue
        if old.get("missing_since"):
            continue
        doc = dict(old, missing_since=stamp)
        if kind == "machine":
            doc["cost"] = machine_cost(doc, stopped_is_free)
        counts["missing"] += 1
        out.changes.append(_change(kind, "missing", cloud, rid, doc,
                                   {"missing_since": {"from": "", "to": stamp}}).put(key, _dump(doc)))


def _change(kind: str, verb: str, cloud: dict[str, Any], rid: str, doc: dict[str, Any],
            diff: dict[str, Any]) -> Change:
    details: dict[str, Any] = {"detected_by": "polling", "cloud": cloud["id"],
                               "name": doc.get("name", ""), "external_id": doc.get("external_id", "")}
    if diff:
        details["changes"] = diff
    event_data: dict[str, Any] = {k: doc.get(k) for k in ("name", "state", "cloud", "missing_since") if k in doc}
    c = Change(f"{kind}.{verb}", org=cloud["org"], target_kind=kind, target_id=rid, details=details)
    return c.event("created" if verb == "detected" else "changed", kind, rid, event_data)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _epoch(stamp: str) -> float:
    try:
        return parse_iso(stamp)
    except ValueError:
        return 0.0
