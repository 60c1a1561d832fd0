"""Cloud documents and the inventory documents a poll keeps: where they live in the store,
their ids, and the views the API returns.

Keys (``<org>`` scopes everything to one organisation):

    cloud/<org>/<cloud>                 the cloud (credentials sealed in ``_secrets``)
    cloudstatus/<org>/<cloud>           its poller's state (not audited: changes every poll)
    machine|volume|network|zone|size|image|location/<org>/<id>
    record/<org>/<zone>/<id>            DNS records under their zone
    cloudidx/<org>/<cloud>/<kind>/<id>  which documents a cloud's polls own

Resource ids are derived from (cloud, kind, external id), so a poll finds its documents
without a lookup and an id never changes while the provider's does not."""

from __future__ import annotations

import hashlib
from typing import Any

from controller.errors import Invalid
from controller.store.docs import DocKind


def _cloud_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Schema 2: every cloud has ``enabled``, ``tags``, ``created_by`` and ``owned_by`` (the
    "Agents" cloud was made without them, so a search for ``enabled:true`` missed it), and
    its users' tags in ``_user_tags`` (older documents kept them only in ``tags``)."""
    doc.setdefault("enabled", True)
    doc.setdefault("tags", {})
    doc.setdefault("_user_tags", dict(doc["tags"]))
    doc.setdefault("created_by", "")
    doc.setdefault("owned_by", "")
    return doc


# schema versions: 1 as first released; 2 (2026-11) see _cloud_v2
CLOUD = DocKind("cloud", 2, {1: _cloud_v2})
VOLUME = DocKind("volume")
NETWORK = DocKind("network")
ZONE = DocKind("zone")
RECORD = DocKind("record")
SIZE = DocKind("size")
IMAGE = DocKind("image")
LOCATION = DocKind("location")
KINDS = (CLOUD, VOLUME, NETWORK, ZONE, RECORD, SIZE, IMAGE, LOCATION)

# resource kinds a poll keeps, in the order they are polled
INVENTORY = ("machine", "volume", "network", "zone", "record", "size", "image", "location")
# kinds whose changes are audited one by one; the others are the provider's catalogue
AUDITED = ("machine", "volume", "network", "zone", "record")


TAG_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/")


def check_tags(tags: Any, where: str = "tags") -> dict[str, str]:
    """Tags as users give them: an object of key -> value (text; null is "")."""
    if tags is None:
        return {}
    if not isinstance(tags, dict) or len(tags) > 100:
        raise Invalid(f"{where} must be an object of at most 100 key -> value", field=where)
    out = {}
    for k, v in tags.items():
        if not k or not set(k) <= TAG_KEY_CHARS or len(k) > 64:
            raise Invalid(f"{where}: bad tag key {k!r}: letters, digits and _.-/", field=where)
        if v is not None and not isinstance(v, str | int | float | bool):
            raise Invalid(f"{where}.{k} must be text", field=where)
        out[k] = "" if v is None else str(v)[:256]
    return out


def agents_cloud_id(org: str) -> str:
    """The id of the organisation's "Agents" cloud (hosts known through their agent)."""
    return hashlib.sha256(f"agents-cloud/{org}".encode()).hexdigest()[:32]


def resource_id(cloud_id: str, kind: str, external_id: str) -> str:
    return hashlib.sha256(f"{cloud_id}/{kind}/{external_id}".encode()).hexdigest()[:24]


def cloud_key(org: str, cloud_id: str) -> str:
    return f"cloud/{org}/{cloud_id}"


def status_key(org: str, cloud_id: str) -> str:
    return f"cloudstatus/{org}/{cloud_id}"


def doc_key(kind: str, org: str, rid: str, zone: str = "") -> str:
    return f"record/{org}/{zone}/{rid}" if kind == "record" else f"{kind}/{org}/{rid}"


def index_prefix(org: str, cloud_id: str, kind: str = "") -> str:
    return f"cloudidx/{org}/{cloud_id}/" + (f"{kind}/" if kind else "")


# the fields each list view has, with their empty values (machines: controller.machines.model)
VIEW_FIELDS: dict[str, dict[str, Any]] = {
    "volume": {"id": "", "external_id": "", "name": "", "cloud": "", "provider": "", "size": 0,
               "state": "", "location": "", "attached_to": [], "tags": {}, "created": "",
               "last_seen": "", "missing_since": "", "extra": {}},
    "network": {"id": "", "external_id": "", "name": "", "cloud": "", "provider": "", "cidr": "",
                "location": "", "subnets": [], "tags": {}, "created": "", "last_seen": "",
                "missing_since": "", "extra": {}},
    "zone": {"id": "", "external_id": "", "domain": "", "name": "", "cloud": "", "provider": "",
             "type": "", "ttl": 0, "records": 0, "tags": {}, "created": "", "last_seen": "",
             "missing_since": "", "extra": {}},
    "record": {"id": "", "external_id": "", "zone": "", "name": "", "type": "", "rdata": [],
               "ttl": 0, "cloud": "", "tags": {}, "created": "", "last_seen": "",
               "missing_since": "", "extra": {}},
    "size": {"id": "", "external_id": "", "name": "", "cloud": "", "provider": "", "cpus": 0,
             "ram": 0, "disk": 0, "cost": {}, "extra": {}},
    "image": {"id": "", "external_id": "", "name": "", "cloud": "", "provider": "",
              "os_type": "", "tags": {}, "extra": {}},
    "location": {"id": "", "external_id": "", "name": "", "cloud": "", "provider": "",
                 "country": "", "extra": {}},
}


def view(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if not k.startswith("_") and k != "org"}
    for k, default in VIEW_FIELDS.get(kind, {}).items():
        out.setdefault(k, default)
    return out
