"""The audit chain: appends link by hash; any change, removal or reordering is found."""

from __future__ import annotations

import json
from pathlib import Path

from controller.audit.chain import entry_key, verify
from controller.events.model import Actor
from controller.events.writer import Change, Writer
from controller.store import open_store


def _writer(tmp_path: Path) -> Writer:
    return Writer(open_store(tmp_path / "db"))


def _fill(w: Writer, n: int) -> None:
    for i in range(n):
        w.commit(Actor("user", id="u1", email="a@example.com"),
                 Change("thing.create", org="o1", target_kind="thing", target_id=str(i)).put(
                     f"thing/o1/{i}", b"{}"))


def test_intact_chain_verifies_and_survives_reopen(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    _fill(w, 5)
    w.store.close()
    w = _writer(tmp_path)  # the head is read back: appends continue the chain
    _fill(w, 3)
    r = verify(w.store)
    assert r.ok and r.entries == 8


def test_altered_entry_is_named(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    _fill(w, 5)
    e = json.loads(w.store.get(entry_key(3)) or b"")
    e["actor"]["email"] = "someone-else@example.com"
    w.store.put(entry_key(3), json.dumps(e).encode())
    r = verify(w.store)
    assert not r.ok and r.broken_at == 3 and "altered" in r.reason


def test_removed_entries_are_found(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    _fill(w, 5)
    w.store.delete(entry_key(2))
    r = verify(w.store)
    assert not r.ok and r.broken_at == 2
    w2 = _writer(tmp_path / "b")
    _fill(w2, 5)
    w2.store.delete(entry_key(5))
    r = verify(w2.store)
    assert not r.ok and "removed from the end" in r.reason


def test_secrets_never_enter_the_entry(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    entry = w.commit(Actor("user"), Change("x.create", details={
        "password": "hunter22", "nested": {"private_key": "PEM"}, "token_name": "ci"}))
    assert entry["details"] == {"password": "***", "nested": {"private_key": "***"}, "token_name": "ci"}
    assert b"hunter22" not in (w.store.get(entry_key(1)) or b"")


def test_failed_write_leaves_no_entry_and_chain_continues(tmp_path: Path) -> None:
    import pytest

    from controller.errors import Conflict

    w = _writer(tmp_path)
    _fill(w, 1)
    with pytest.raises(Conflict):
        w.commit(Actor("user"), Change("x.create").put("x/1", b"{}").expect("thing/o1/0", None))
    assert w.store.get("x/1") is None
    _fill(w, 1)
    assert verify(w.store).ok and verify(w.store).entries == 2
