"""The store interface every backend implements."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from controller.errors import OvercastError


class StoreLocked(OvercastError):
    """Another process holds the store open for writing."""

    code = "store_locked"


# Batch.samples' keys (hour partitions, the head, and the samples of stores from before them)
SAMPLES_PREFIXES = ("tsr/", "ts/", "tsh/")


@dataclass
class Batch:
    """Puts and deletes applied all together or not at all by :meth:`Store.write`.

    ``expect`` holds compare-and-set conditions: key -> value it must have (None: absent) at
    write time, else the whole batch is refused with :class:`controller.errors.Conflict`.

    ``samples`` are time-series samples as stored bytes, ``(key, value)``, keys under
    ``ts/`` (the TSDB's): written as they are, a later pair with the same key winning, and
    seen by nothing else (no compare-and-set, no prefix counts: :meth:`Store.count` refuses
    ``ts/``). Ingest puts ~100,000 a second there: no str keys to encode, no dict.
    """

    puts: dict[str, bytes] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    expect: dict[str, bytes | None] = field(default_factory=dict)
    samples: list[tuple[bytes, bytes]] = field(default_factory=list)

    def put(self, key: str, value: bytes) -> None:
        self.deletes.discard(key)
        self.puts[key] = value

    def delete(self, key: str) -> None:
        self.puts.pop(key, None)
        self.deletes.add(key)

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes or self.samples)


class Cursor(Protocol):
    """Many short reads in a row through one iterator of the store (making an iterator costs
    more than reading a few keys). It sees the store as it was when it was made: make one
    for a round of reads, close it after (it holds on to what the store replaced meanwhile).
    One thread at a time."""

    def range(self, prefix: str, start: str, stop: str,
              limit: int | None = None) -> tuple[list[bytes], list[bytes]]:
        """:meth:`Store.scan_range` through the cursor."""
        ...

    def first_key(self, prefix: str, start: str) -> str | None:
        """The first key with ``prefix`` from ``start`` on, None if there is none."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def close(self) -> None: ...


class Store(Protocol):
    """A sorted key-value store. Calls block only briefly (memtable writes, cached reads);
    callers on the event loop may call them directly. ``close`` is the owner's job."""

    read_only: bool

    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def write(self, batch: Batch, sync: bool = False) -> None:
        """Apply ``batch`` atomically; raise Conflict if an ``expect`` does not hold. Every
        write survives the process being killed; ``sync`` also waits for the disk (power
        loss), for what is acknowledged to others as stored."""
        ...

    def delete_range(self, start: str, end: str) -> None:
        """Delete every key from ``start`` (inclusive) to ``end`` (exclusive)."""
        ...

    def scan(
        self,
        prefix: str,
        *,
        start: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
        keys_only: bool = False,
    ) -> Iterator[tuple[str, bytes]]:
        """Items whose key starts with ``prefix`` in key order (``start``: first key, inclusive;
        with ``reverse``, the last key, inclusive). ``keys_only`` yields empty values."""
        ...

    def scan_range(self, prefix: str, start: str, stop: str,
                   limit: int | None = None) -> tuple[list[bytes], list[bytes]]:
        """Keys (stored bytes) and values with ``prefix``, ``start`` <= key <= ``stop``, in
        key order, at most ``limit``, as two lists."""
        ...

    def count(self, prefix: str) -> int: ...

    def cursor(self) -> Cursor:
        """A :class:`Cursor` on the store as it is now."""
        ...

    def memory(self) -> dict[str, int]:
        """Bytes of memory the backend holds, by part (for the controller's metrics)."""
        ...

    def checkpoint(self, target_dir: str) -> None:
        """A consistent copy of the whole store in ``target_dir`` (which must not exist)."""
        ...

    def catch_up(self) -> None:
        """For a read-only/secondary open: see what the writer wrote since. No-op otherwise."""
        ...

    def close(self) -> None: ...
