"""Reading machines. Machines are written by the cloud pollers and the agents (through the
one writer); here they are listed and shown, per organisation."""

from __future__ import annotations

import json
import re
from typing import Any

from controller.accounts.model import Principal
from controller.errors import BadRequest, NotFound
from controller.listing import Query, Search, apply, page_info, project
from controller.machines.model import FIELDS, MACHINE, key, view
from controller.store.base import Store


class MachineService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self, p: Principal, query: Query) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        prefix = f"machine/{p.org_id}/"
        if query.search is not None or query.sort:
            needles = _needles(query)
            docs = (self._load(raw) for _, raw in self.store.scan(prefix)
                    if not needles or not raw.isascii() or all(n in raw.lower() for n in needles))
            return apply(docs, query)
        # Fast path, no search and no sort: pages come in key order straight from the store,
        # and the total is the store's (cached) count: ~constant time at 100,000 machines.
        total = self.store.count(prefix)
        if isinstance(query.start, int):
            offset = query.start
            first = None
            if offset:
                for i, (k, _) in enumerate(self.store.scan(prefix, keys_only=True)):
                    if i == offset:
                        first = k
                        break
                else:
                    return [], page_info(total, 0, query, start=offset)
        else:
            first = prefix + query.start
            if "/" in query.start or self.store.get(first) is None:
                raise BadRequest(f"start: no machine has the id {query.start!r}", field="start")
            offset = 0
            for k, _ in self.store.scan(prefix, keys_only=True):
                if k >= first:
                    break
                offset += 1
        data = [project(self._load(raw), query.only)
                for _, raw in self.store.scan(prefix, start=first, limit=query.limit)]
        return data, page_info(total, len(data), query, start=offset)

    def matching_ids(self, p: Principal, search: Search) -> set[str]:
        """The metric ids (``machine_id`` labels) of every machine of the caller's organisation
        that ``search`` matches: a cloud machine linked to an agent reports under the agent's
        id, so it contributes both."""
        out: set[str] = set()
        for m in (self._load(raw) for _, raw in self.store.scan(f"machine/{p.org_id}/")):
            if search.matches(m):
                out.add(m["id"])
                if m.get("agent"):
                    out.add(str(m["agent"]))
        return out

    @staticmethod
    def _load(raw: bytes) -> dict[str, Any]:
        doc, _ = MACHINE.upgrade(json.loads(raw))
        return view(doc)

    def get(self, p: Principal, machine_id: str) -> dict[str, Any]:
        raw = self.store.get(key(p.org_id, machine_id)) if p.org_id and "/" not in machine_id else None
        if raw is None:
            raise NotFound("no such machine", {"id": machine_id})
        doc = self._load(raw)
        # Mist's key_associations: kept beside the machine (pollers rewrite the machine)
        doc["key_associations"] = [
            {k: a.get(k) for k in ("key", "user", "port", "sudo", "last_used")}
            for _, a in ((k, json.loads(v)) for k, v in
                         self.store.scan(f"keyassoc/{p.org_id}/{doc['id']}/"))]
        return doc


_PLAIN = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _needles(query: Query) -> list[bytes]:
    """Byte strings every matching document's JSON must contain: the plain ASCII values of the
    search's top-level ``key:value`` terms. Checking them on the raw bytes skips decoding most
    documents that cannot match (a necessary condition only; ``matches`` decides). Documents
    that are not pure ASCII are always decoded (case folding: "Straße" matches "STRASSE"),
    and a value equal to a field's default is no needle (the field may be absent)."""
    if query.search is None:
        return []
    out = []
    for k, v in query.search.equalities().items():
        if not _PLAIN.match(v) or k.split(".")[0] == "monitoring":
            continue  # monitoring is made by the view (machines.model), not stored as shown
        if k in FIELDS and _default_text(FIELDS[k]) == v.lower():
            continue  # a document without the field matches through its default value
        out.append(v.lower().encode())
    return out


def _default_text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v).lower()
