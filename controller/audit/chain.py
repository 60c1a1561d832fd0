"""Hash-chained audit entries. Entry N stores ``prev`` (entry N-1's hash) and ``hash`` =
SHA-256 over ``prev`` and the canonical JSON of the entry's other fields, so changing,
removing or reordering any entry breaks the chain from there on (:func:`verify`).

Entries carry their schema version ``v`` (entries written before it existed have none; they
verify all the same: the hash covers whatever fields an entry has)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from controller.store.base import Batch, Store

GENESIS = "0" * 64
VERSION = 1  # the schema version of the entries written now
HEAD_KEY = "meta/audit/head"


def entry_key(seq: int) -> str:
    return f"audit/{seq:016d}"


def org_index_key(org: str, seq: int) -> str:
    return f"auditorg/{org}/{seq:016d}"


def canonical(entry: dict[str, Any]) -> bytes:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute_hash(prev: str, entry: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + b"\n" + canonical(entry)).hexdigest()


@dataclass
class Head:
    seq: int = 0
    hash: str = GENESIS


class Chain:
    """Appends entries to a batch and advances the head once the batch is written. The
    caller (the writer) serialises appends."""

    def __init__(self, store: Store) -> None:
        self._store = store
        raw = store.get(HEAD_KEY)
        if raw is None:
            self.head = Head()
        else:
            h = json.loads(raw)
            self.head = Head(int(h["seq"]), str(h["hash"]))

    def append(self, batch: Batch, entry: dict[str, Any],
               after: Head | None = None) -> tuple[dict[str, Any], Head]:
        """Add ``entry`` after ``after`` (default: the head) to ``batch``; return the stored
        entry and the head it makes, for :meth:`advance` once the batch is written."""
        prev = after or self.head
        seq = prev.seq + 1
        entry = dict(entry, v=VERSION, id=f"{seq:016d}", seq=seq, prev=prev.hash)
        entry["hash"] = compute_hash(prev.hash, entry)
        new_head = Head(seq, entry["hash"])
        batch.put(entry_key(seq), json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode())
        org = entry.get("org") or "_"
        batch.put(org_index_key(org, seq), b"")
        batch.put(HEAD_KEY, json.dumps({"seq": seq, "hash": new_head.hash}).encode())
        return entry, new_head

    def advance(self, head: Head) -> None:
        self.head = head


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    broken_at: int | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "broken_at": self.broken_at, "reason": self.reason}


def verify(store: Store) -> VerifyResult:
    """Walk the whole chain; report the first entry where it breaks, and why."""
    prev = GENESIS
    expected_seq = 1
    n = 0
    for key, raw in store.scan("audit/"):
        try:
            entry = json.loads(raw)
        except ValueError:
            return VerifyResult(False, n, expected_seq, f"{key} is not valid JSON")
        seq = entry.get("seq")
        if seq != expected_seq or key != entry_key(expected_seq):
            return VerifyResult(False, n, expected_seq,
                                f"entry {expected_seq} is missing (found {key})")
        if entry.get("prev") != prev:
            return VerifyResult(False, n, seq, f"entry {seq} does not link to entry {seq - 1}")
        if compute_hash(prev, entry) != entry.get("hash"):
            return VerifyResult(False, n, seq, f"entry {seq} was altered (its hash does not match)")
        prev = entry["hash"]
        expected_seq += 1
        n += 1
    raw_head = store.get(HEAD_KEY)
    if raw_head is not None:
        head = json.loads(raw_head)
        head_seq = int(head["seq"])
        if head_seq > n:
            return VerifyResult(False, n, n + 1,
                                f"the log ends at entry {n} but its head records entry {head_seq}: "
                                "entries were removed from the end")
        if head_seq < n:
            return VerifyResult(False, head_seq, head_seq + 1,
                                f"the head records entry {head_seq} but the log goes on to entry "
                                f"{n}: entries were added after it")
        if head["hash"] != prev:
            return VerifyResult(False, n - 1, n,
                                f"entry {n} was altered or replaced (its hash is not the one the "
                                "head records)")
    return VerifyResult(True, n)
