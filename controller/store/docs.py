"""JSON documents in the store: each carries its kind's schema version ``_v`` and is migrated
forward on start (:func:`migrate_store`) and, should an old one slip through, on read."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.errors import OvercastError
from controller.store.base import Batch, Store

log = logging.getLogger(__name__)

Migration = Callable[[dict[str, Any]], dict[str, Any]]


class SchemaTooNew(OvercastError, RuntimeError):
    """The store holds documents of a newer schema than this code knows (a newer release
    wrote them): refused rather than misread. Run that release, or restore a backup."""

    code = "schema_too_new"


@dataclass(frozen=True)
class DocKind:
    """A kind of stored document: the first part of its keys (``machine`` in
    ``machine/<org>/<id>``), its current schema version, and the steps that lift a document
    from version N to N+1 (``migrations[N]``)."""

    name: str
    version: int = 1
    migrations: Mapping[int, Migration] = field(default_factory=dict)

    def upgrade(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        v = int(doc.get("_v", 1))
        if v > self.version:
            raise SchemaTooNew(
                f"a stored {self.name} has schema version {v}, newer than this controller's "
                f"{self.version}: run the newer controller, or restore a backup"
            )
        changed = False
        while v < self.version:
            doc = self.migrations[v](doc)
            v += 1
            doc["_v"] = v
            changed = True
        return doc, changed


def dump(kind: DocKind, doc: Mapping[str, Any]) -> bytes:
    out = dict(doc)
    out["_v"] = kind.version
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()


def load(kind: DocKind, raw: bytes) -> dict[str, Any]:
    doc = json.loads(raw)
    doc, _ = kind.upgrade(doc)
    return doc


def by_ref(store: Store, kind: DocKind, prefix: str, ref: str) -> tuple[dict[str, Any], bytes] | None:
    """The document ``prefix + ref`` (``prefix`` ends with "/"), else the first under
    ``prefix`` named ``ref`` — Mist lets a name stand for the id — with its stored bytes;
    None when there is neither. A ``ref`` with "/" is never a key."""
    raw = store.get(prefix + ref) if ref and "/" not in ref else None
    if raw is not None:
        return load(kind, raw), raw
    for _, v in store.scan(prefix) if ref else ():
        doc = load(kind, v)
        if doc.get("name") == ref:
            return doc, v
    return None


def public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document without store-only fields (those starting with ``_``)."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def migrate_store(store: Store, kinds: Iterable[DocKind], batch_size: int = 1000) -> dict[str, int]:
    """Rewrite every document older than its kind's version; return counts per kind.

    ``meta/schema/<kind>`` records the version a kind was last migrated to, so a start with
    nothing to do scans nothing. A kind recorded newer than this code knows raises
    SchemaTooNew before anything is written (a newer release used this store)."""
    kinds = list(kinds)
    check_not_newer(store, kinds)
    done: dict[str, int] = {}
    for kind in kinds:
        marker = f"meta/schema/{kind.name}"
        raw = store.get(marker)
        if raw is not None and int(raw) >= kind.version:
            continue
        n = 0
        batch = Batch()
        for key, value in store.scan(kind.name + "/"):
            doc, changed = kind.upgrade(json.loads(value))
            if changed:
                batch.put(key, dump(kind, doc))
                n += 1
            if len(batch.puts) >= batch_size:
                store.write(batch)
                batch = Batch()
        batch.put(marker, str(kind.version).encode())
        store.write(batch)
        if n:
            log.info("migrated %d %s documents to schema version %d", n, kind.name, kind.version)
        done[kind.name] = n
    return done


def stored_versions(store: Store) -> dict[str, int]:
    """The schema version each kind was last migrated to, as the store records it."""
    return {k.rsplit("/", 1)[1]: int(v) for k, v in store.scan("meta/schema/")}


def check_not_newer(store: Store, kinds: Iterable[DocKind]) -> None:
    """Raise SchemaTooNew naming every kind the store records newer than this code's."""
    known = {k.name: k.version for k in kinds}
    newer = [f"{name} {v} (this controller knows {known[name]})"
             for name, v in sorted(stored_versions(store).items())
             if name in known and v > known[name]]
    if newer:
        raise SchemaTooNew(
            "the store was written by a newer Overcast: schema versions " + ", ".join(newer)
            + "; run that version (or newer), or restore a backup made by this one")
