"""RocksDB backend through rocksdict: the only module that imports rocksdict."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    Checkpoint,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

from controller.errors import Conflict
from controller.store.base import SAMPLES_PREFIXES, Batch, StoreLocked


def _options() -> Options:
    # raw_mode: keys and values are plain bytes (no pickling). A raw DB reopened without
    # raw_mode silently answers None to every get, so every open goes through here.
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_compression_type(DBCompressionType.lz4())
    opts.set_max_background_jobs(2)
    # memtables: 2 x 32 MiB at most by default (RocksDB's default is 2 x 64 MiB); measured
    # with 10,000 agents writing, the smaller ones cost no ingest rate and save ~64 MiB of
    # resident memory (setting: store_write_buffer_mib)
    opts.set_write_buffer_size(_memory["write_buffer"])
    opts.set_max_write_buffer_number(2)
    opts.set_block_based_table_factory(_table_options())
    return opts


# Index blocks live in the block cache, bounded, instead of beside it for as long as their
# file is open (RocksDB's default): they are ~1.6 % of the time series' bytes (one entry per
# 4 KiB block of ~100 samples), so a controller keeping a week of samples from 1,000 agents
# (~70 GiB) would have held ~1.1 GiB of them in memory, growing with the store. Partitioned
# (two-level) indexes keep the part always in memory small; the top level of each file and
# the newest files' indexes stay pinned. (bench/tsdb_bench.py: table_readers_mem_bytes.)
# 8 MiB by default: at 10,000 agents a 64 MiB cache (full) made the controller's RSS ~140 MiB
# larger for no less CPU (bench/agents_scale_bench.py); controllers before this round ran
# with RocksDB's own 8 MiB cache anyway (see RocksStore.__init__). Setting: store_cache_mib.
BLOCK_CACHE_BYTES = 8 * 1024 * 1024
WRITE_BUFFER_BYTES = 32 * 1024 * 1024
_CACHE: Cache | None = None  # one for every store of the process
_memory = {"cache": BLOCK_CACHE_BYTES, "write_buffer": WRITE_BUFFER_BYTES}


def set_memory(cache_bytes: int = BLOCK_CACHE_BYTES,
               write_buffer_bytes: int = WRITE_BUFFER_BYTES) -> None:
    """The block cache's capacity (shared by the stores of the process: changed at once) and
    each memtable's size (for stores opened from now on). Settings store_cache_mib and
    store_write_buffer_mib."""
    # at least 1 MiB each (settings are checked at 8: this is for callers that skip that)
    cache_bytes, write_buffer_bytes = max(cache_bytes, 1 << 20), max(write_buffer_bytes, 1 << 20)
    _memory["cache"], _memory["write_buffer"] = cache_bytes, write_buffer_bytes
    if _CACHE is not None:
        _CACHE.set_capacity(cache_bytes)


def _table_options() -> BlockBasedOptions:
    global _CACHE
    if _CACHE is None:
        _CACHE = Cache(_memory["cache"])
    t = BlockBasedOptions()
    t.set_block_cache(_CACHE)
    t.set_cache_index_and_filter_blocks(True)
    t.set_pin_l0_filter_and_index_blocks_in_cache(True)
    t.set_index_type(BlockBasedIndexType.two_level_index_search())
    t.set_pin_top_level_index_and_filter(True)
    return t


def _upper_bound(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return None


def _collect(items: Iterable[tuple[Any, Any]], p: bytes, first: bytes, last: bytes,
             n: int) -> tuple[list[bytes], list[bytes]]:
    """From ``items`` (RocksDB's items from a key on), those with prefix ``p`` up to ``last``
    (inclusive), at most ``n`` (-1: all): keys and values as two lists. (An items iterator
    gives a key and its value in one call, where an RdictIter takes four: valid, key, value,
    next; a rollup run reads every series' new samples: 16 -> 8 us for 30 samples.)"""
    keys: list[bytes] = []
    values: list[bytes] = []
    if n == 0:
        return keys, values
    inside = first.startswith(p) and last.startswith(p)  # then so is every key between
    add_key, add_value = keys.append, values.append
    for k, v in items:
        if k > last or not (inside or k.startswith(p)):
            break
        add_key(k)
        add_value(v)
        n -= 1
        if n == 0:
            break
    return keys, values


class _Cursor:
    """A Cursor (see base.py): one RocksDB iterator, each read a seek on it. Making an
    iterator per read (what scan_range does) merges the memtables' and every file's anew:
    a round of 10,000 machines x 5 rules, whose reads mostly find a sample or none, took
    1.05 s of CPU that way against 0.86 through a cursor (medians of 3 runs each)."""

    def __init__(self, it: Any) -> None:
        self._it = it

    def range(self, prefix: str, start: str, stop: str,
              limit: int | None = None) -> tuple[list[bytes], list[bytes]]:
        p, first, last = prefix.encode(), start.encode(), stop.encode()
        keys: list[bytes] = []
        values: list[bytes] = []
        n = -1 if limit is None else limit
        if n == 0:
            return keys, values
        it = self._it
        it.seek(first if first > p else p)
        inside = first.startswith(p) and last.startswith(p)  # then so is every key between
        while it.valid():
            k = it.key()
            if k > last or not (inside or k.startswith(p)):
                break
            keys.append(k)
            values.append(it.value())
            n -= 1
            if n == 0:
                break
            it.next()
        return keys, values

    def first_key(self, prefix: str, start: str) -> str | None:
        p, s = prefix.encode(), start.encode()
        it = self._it
        it.seek(s if s > p else p)
        if it.valid():
            k = it.key()
            if k.startswith(p):
                return cast(str, k.decode())
        return None

    def get(self, key: str) -> bytes | None:
        k = key.encode()
        it = self._it
        it.seek(k)
        return cast(bytes, it.value()) if it.valid() and it.key() == k else None

    def close(self) -> None:
        self._it = None  # RocksDB lets go of what the iterator held


class RocksStore:
    """One RocksDB under ``path``. ``mode`` is "rw" (the one writer), "ro" (a snapshot at open)
    or "secondary" (follows the writer through :meth:`catch_up`)."""

    def __init__(self, path: str | os.PathLike[str], mode: str = "rw") -> None:
        self.path = Path(path)
        self.read_only = mode != "rw"
        self._lock = threading.Lock()  # serialises batches: compare-and-set, counts
        self._counts: dict[str, int] = {}
        self._secondary_dir: tempfile.TemporaryDirectory[str] | None = None
        # The column family's options are given too: without them rocksdict reopens an
        # existing store with the options of its OPTIONS file and a block cache of its own
        # (RocksDB's default, 8 MiB), so neither these options nor the settings applied to a
        # store after its first open (found this round: controllers ran with that cache).
        opts = _options()
        families = {"default": opts}
        try:
            if mode == "rw":
                self.path.mkdir(parents=True, exist_ok=True)
                os.chmod(self.path, 0o700)
                self._db = Rdict(str(self.path), options=opts, column_families=families)
            elif mode == "ro":
                self._db = Rdict(str(self.path), options=opts, column_families=families,
                                 access_type=AccessType.read_only())
            elif mode == "secondary":
                self._secondary_dir = tempfile.TemporaryDirectory(prefix="overcast-secondary-")
                self._db = Rdict(
                    str(self.path),
                    options=opts,
                    column_families=families,
                    access_type=AccessType.secondary(self._secondary_dir.name),
                )
                self._db.try_catch_up_with_primary()
            else:
                raise ValueError(f"unknown store mode {mode!r}")
        except Exception as exc:  # rocksdict raises plain Exception with RocksDB's text
            if "lock" in str(exc).lower():
                raise StoreLocked(
                    f"the store at {self.path} is open for writing by another process"
                ) from exc
            raise
        self._wopts = WriteOptions()
        self._sync_wopts = WriteOptions()
        self._sync_wopts.sync = True

    # reads
    def get(self, key: str) -> bytes | None:
        value = self._db.get(key.encode())
        return value if value is None else bytes(value)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        return cast(list[bytes | None], self._db.get([k.encode() for k in keys]))

    def scan(
        self,
        prefix: str,
        *,
        start: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
        keys_only: bool = False,
    ) -> Iterator[tuple[str, bytes]]:
        p = prefix.encode()
        # Iterator bounds in ReadOptions are not raw-encoded by rocksdict: check the prefix here.
        it = self._db.iter()
        if reverse:
            if start is not None:
                it.seek_for_prev(start.encode())
            else:
                upper = _upper_bound(p)
                if upper is None:
                    it.seek_to_last()
                else:
                    it.seek_for_prev(upper)
                    if it.valid() and it.key() == upper:
                        it.prev()
        else:
            it.seek(start.encode() if start is not None and start.encode() > p else p)
        n = 0
        while it.valid():
            if limit is not None and n >= limit:
                return
            key = it.key()
            if not key.startswith(p):
                return
            yield key.decode(), (b"" if keys_only else it.value())
            n += 1
            if reverse:
                it.prev()
            else:
                it.next()

    def scan_range(self, prefix: str, start: str, stop: str,
                   limit: int | None = None) -> tuple[list[bytes], list[bytes]]:
        """Keys (as stored bytes) and values of the items with ``prefix`` from ``start`` to
        ``stop`` (both inclusive), in key order, at most ``limit``: :meth:`scan` in one call
        with no generator between items, for the TSDB's reads of thousands of samples."""
        p = prefix.encode()
        first = start.encode()
        last = stop.encode()
        return _collect(self._db.items(from_key=first if first > p else p), p, first, last,
                        -1 if limit is None else limit)

    def cursor(self) -> _Cursor:
        return _Cursor(self._db.iter())

    def memory(self) -> dict[str, int]:
        """Bytes of memory RocksDB holds: its block cache (shared by the stores of the
        process), this store's memtables, and the files' readers outside the cache."""
        out = {"block_cache": _CACHE.get_usage() if _CACHE is not None else 0}
        # all memtables, flushed ones an iterator still holds too
        for part, name in (("memtables", "rocksdb.size-all-mem-tables"),
                           ("table_readers", "rocksdb.estimate-table-readers-mem")):
            try:
                out[part] = int(self._db.property_int_value(name) or 0)
            except Exception:  # noqa: BLE001 - closed meanwhile: report what is known
                out[part] = 0
        return out

    def count(self, prefix: str) -> int:
        # Counting 100,000 keys takes ~35 ms; list endpoints need the total on every page, so
        # a prefix's count is scanned once and then kept exact by every write (a writer-only
        # cache: a read-only open rescans each time because another process writes).
        if prefix.startswith(SAMPLES_PREFIXES):
            raise ValueError(f"{prefix!r}: time-series samples are not counted (Batch.samples)")
        with self._lock:
            cached = self._counts.get(prefix)
            if cached is not None:
                return cached
            n = sum(1 for _ in self.scan(prefix, keys_only=True))
            if not self.read_only:
                self._counts[prefix] = n
            return n

    def _count_changes(self, puts: list[str], deletes: list[str]) -> dict[str, int]:
        """Per cached prefix, how many keys the write adds (+) or removes (-). Under _lock."""
        if not self._counts:
            return {}
        delta: dict[str, int] = {}
        prefixes = list(self._counts)
        # only keys whose first part starts some cached prefix can change a count: a bulk
        # write of time-series samples pays one set lookup per key, not a scan of prefixes
        roots = {p.split("/", 1)[0] for p in prefixes}
        for keys, sign in ((puts, 1), (deletes, -1)):
            for k in keys:
                if k.split("/", 1)[0] not in roots and "" not in roots:
                    continue
                hits = [p for p in prefixes if k.startswith(p)]
                if not hits:
                    continue
                exists = self._db.get(k.encode()) is not None
                if exists == (sign > 0):
                    continue  # an update of an existing key, or a delete of a missing one
                for p in hits:
                    delta[p] = delta.get(p, 0) + sign
        return delta

    def _apply_counts(self, delta: dict[str, int]) -> None:
        for p, d in delta.items():
            self._counts[p] += d

    # writes
    def put(self, key: str, value: bytes) -> None:
        self.write(Batch(puts={key: value}))

    def delete(self, key: str) -> None:
        self.write(Batch(deletes={key}))

    def write(self, batch: Batch, sync: bool = False) -> None:
        self._check_writable()
        wb = WriteBatch(raw_mode=True)
        for k, v in batch.puts.items():
            wb.put(k.encode(), v)
        for k in batch.deletes:
            wb.delete(k.encode())
        put = wb.put
        for k_raw, v in batch.samples:
            put(k_raw, v)
        with self._lock:
            for k, expected in batch.expect.items():
                if self.get(k) != expected:
                    raise Conflict(
                        "the resource was changed meanwhile; try again",
                        {"kind": k.split("/")[0]},
                    )
            delta = self._count_changes(list(batch.puts), list(batch.deletes))
            self._db.write(wb, self._sync_wopts if sync else self._wopts)
            self._apply_counts(delta)

    def delete_range(self, start: str, end: str) -> None:
        self._check_writable()
        with self._lock:
            if any(start <= p < end or p.startswith(start) for p in self._counts):
                self._counts.clear()  # rare (retention): recount on next use
            self._db.delete_range(start.encode(), end.encode(), self._wopts)

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreLocked("this store was opened read-only")

    # maintenance
    def checkpoint(self, target_dir: str) -> None:
        Checkpoint(self._db).create_checkpoint(target_dir)

    def catch_up(self) -> None:
        if self._secondary_dir is not None:
            self._db.try_catch_up_with_primary()

    def flush(self) -> None:
        self._db.flush()

    def close(self) -> None:
        self._db.close()
        if self._secondary_dir is not None:
            self._secondary_dir.cleanup()
            self._secondary_dir = None


def open_store(path: str | os.PathLike[str], mode: str = "rw") -> RocksStore:
    return RocksStore(path, mode)
