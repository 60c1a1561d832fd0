"""Schema migrations on start: the cloud documents' version 2, and a store newer than the
code refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.clouds.model import CLOUD
from controller.errors import OvercastError
from controller.services import DOC_KINDS
from controller.store import open_store
from controller.store.docs import SchemaTooNew, migrate_store


def test_cloud_v2_fills_what_the_agents_cloud_lacked() -> None:
    agents_v1 = {"id": "c", "org": "o", "name": "Agents", "provider": "other", "agents": True,
                 "created": "2026-01-01T00:00:00Z", "_v": 1}
    doc, changed = CLOUD.upgrade(dict(agents_v1))
    assert changed and doc["_v"] == 2
    assert (doc["enabled"], doc["tags"], doc["_user_tags"], doc["created_by"]) == (True, {}, {}, "")
    # an older user cloud kept its users' tags only in "tags"; a disabled one stays disabled
    old = {"id": "d", "name": "DO", "enabled": False, "tags": {"env": "prod"}, "_v": 1}
    doc, _ = CLOUD.upgrade(dict(old))
    assert doc["_user_tags"] == {"env": "prod"} and doc["enabled"] is False
    # idempotent: a v2 document is left as it is
    assert CLOUD.upgrade(dict(doc)) == (doc, False)


def test_a_store_recorded_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    store.put("cloud/o/c", json.dumps({"id": "c", "_v": 1}).encode())
    store.put("meta/schema/cloud", b"7")
    store.put("meta/schema/user", b"1")
    with pytest.raises(SchemaTooNew, match=r"newer Overcast: schema versions cloud 7 \(this "
                                           r"controller knows 2\)") as exc:
        migrate_store(store, DOC_KINDS)
    assert isinstance(exc.value, OvercastError)  # the CLI says it in one line, no traceback
    assert json.loads(store.get("cloud/o/c") or b"")["_v"] == 1  # nothing written
    store.close()


def test_a_newer_document_without_a_marker_is_refused_too(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")
    store.put("cloud/o/c", json.dumps({"id": "c", "_v": 5}).encode())
    with pytest.raises(SchemaTooNew, match="a stored cloud has schema version 5"):
        migrate_store(store, DOC_KINDS)
    store.close()
