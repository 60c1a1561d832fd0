"""Stored documents carry a schema version and are migrated forward on start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.store import open_store
from controller.store.docs import DocKind, dump, load, migrate_store


def _v1_to_v2(doc: dict) -> dict:  # type: ignore[type-arg]
    doc["display_name"] = doc.pop("name").title()
    return doc


def _v2_to_v3(doc: dict) -> dict:  # type: ignore[type-arg]
    doc["tags"] = {}
    return doc


THING_V1 = DocKind("thing", 1)
THING_V3 = DocKind("thing", 3, {1: _v1_to_v2, 2: _v2_to_v3})


def test_documents_carry_their_version() -> None:
    raw = dump(THING_V3, {"id": "1", "display_name": "A", "tags": {}})
    assert json.loads(raw)["_v"] == 3


def test_migration_on_start_rewrites_old_documents_once(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db")
    for i in range(5):
        store.put(f"thing/org/{i}", dump(THING_V1, {"id": str(i), "name": f"web {i}"}))
    store.put("other/x", b'{"_v": 1}')
    assert migrate_store(store, [THING_V3]) == {"thing": 5}
    doc = json.loads(store.get("thing/org/2") or b"")
    assert doc == {"id": "2", "display_name": "Web 2", "tags": {}, "_v": 3}
    assert store.get("other/x") == b'{"_v": 1}'  # other kinds untouched
    assert migrate_store(store, [THING_V3]) == {}  # recorded: nothing scanned next start
    store.close()


def test_reading_an_old_document_upgrades_it_in_memory() -> None:
    assert load(THING_V3, dump(THING_V1, {"id": "1", "name": "db"}))["display_name"] == "Db"


def test_a_newer_document_than_the_code_is_refused() -> None:
    with pytest.raises(RuntimeError, match="newer than this controller"):
        load(THING_V1, dump(THING_V3, {"id": "1"}))
