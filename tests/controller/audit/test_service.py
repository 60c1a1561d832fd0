"""Reading the audit log: time windows seek instead of walking the whole log."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.accounts.model import Principal
from controller.audit import service as audit_service
from controller.audit.service import AuditService
from controller.events import writer as writer_mod
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.listing import parse_query
from controller.store import open_store

P = Principal({"id": "u1", "email": "a@example.com"}, {"id": "o1", "name": "Acme"}, "owner", "token", "t")


@pytest.fixture
def svc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AuditService:
    w = Writer(open_store(tmp_path / "db"))
    clock = [1_700_000_000.0]
    monkeypatch.setattr(writer_mod.time, "time", lambda: clock[0])
    for i in range(3000):  # one entry an hour
        clock[0] = 1_700_000_000.0 + i * 3600
        w.commit(Actor("user", id="u1", org="o1"), Change("thing.touch", org="o1", target_id=str(i)))
    return AuditService(w.store)


def test_until_and_since_select_the_window(svc: AuditService) -> None:
    data, meta = svc.entries(P, parse_query({"limit": "1000"}),
                             since="2023-11-15T00:00:00Z", until="2023-11-16T00:00:00Z")
    times = [e["time"] for e in data]
    assert meta["total"] == len(data) == 24  # 00:13 to 23:13
    assert times == sorted(times, reverse=True)  # newest first
    assert all(1_700_006_400 <= t <= 1_700_092_800 for t in times)


def test_old_entries_are_reached_with_until_even_past_the_scan_limit(
        svc: AuditService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_service, "MAX_SCAN", 100)
    # entry 23 is at 2023-11-15 21:13; the newest 100 entries are months later
    data, meta = svc.entries(P, parse_query({"limit": "5"}), until="2023-11-15T22:00:00Z")
    assert [e["target"]["id"] for e in data] == ["23", "22", "21", "20", "19"]
    data, meta = svc.entries(P, parse_query({"limit": "5"}))
    assert meta["truncated"] is True and meta["total"] == 100
