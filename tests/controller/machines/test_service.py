"""Listing machines: the fast path, and the search path's raw-byte pre-filter never
changes what a search finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.accounts.model import Principal
from controller.listing import parse_query
from controller.machines.model import MACHINE
from controller.machines.service import MachineService
from controller.store import open_store
from controller.store.docs import dump

ORG = "o1"
P = Principal({"id": "u1", "email": "a@example.com"}, {"id": ORG, "name": "Acme"}, "owner", "token", "t1")


@pytest.fixture
def svc(tmp_path: Path) -> MachineService:
    store = open_store(tmp_path / "db")
    docs = [
        {"id": "m1", "name": "web-1", "state": "running", "tags": {"env": "prod"}},
        {"id": "m2", "name": "Straße", "state": "stopped"},
        {"id": "m3", "name": "db"},  # no state, no monitoring: defaults apply
        {"id": "m4", "name": "cache", "state": "running", "monitoring": True, "agent": "m4"},
    ]
    for d in docs:
        store.put(f"machine/{ORG}/{d['id']}", dump(MACHINE, d))
    return MachineService(store)


@pytest.mark.parametrize(("search", "ids"), [
    ("state:running", {"m1", "m4"}),
    ("state:unknown", {"m3"}),           # matches through the default of a missing field
    ("monitoring.enabled:false", {"m1", "m2", "m3"}),
    ("monitoring.state:connected", {"m4"}),  # made by the view: no needle in the JSON
    ("name:STRASSE", {"m2"}),            # case folding beyond ASCII
    ("tags.env:prod state:running", {"m1"}),
])
def test_search_finds_what_the_plain_filter_finds(svc: MachineService, search: str, ids: set[str]) -> None:
    data, meta = svc.list(P, parse_query({"search": search}))
    assert {m["id"] for m in data} == ids
    assert meta["total"] == len(ids)


def test_fast_path_pages_by_offset_and_by_id(svc: MachineService) -> None:
    data, meta = svc.list(P, parse_query({"limit": "2"}))
    assert [m["id"] for m in data] == ["m1", "m2"] and meta == {"total": 4, "returned": 2, "sort": "", "start": 0}
    data, meta = svc.list(P, parse_query({"limit": "2", "start": "m3"}))
    assert [m["id"] for m in data] == ["m3", "m4"] and meta["start"] == 2
    data, meta = svc.list(P, parse_query({"start": "3"}))
    assert [m["id"] for m in data] == ["m4"]
