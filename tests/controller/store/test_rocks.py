"""The RocksDB store behind its interface: ordering, prefixes, batches, compare-and-set,
counts, and the one-writer rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.errors import Conflict
from controller.store import Batch, StoreLocked, open_store


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = open_store(tmp_path / "db")
    yield s
    s.close()


def test_get_put_delete(store) -> None:  # type: ignore[no-untyped-def]
    assert store.get("a/1") is None
    store.put("a/1", b"one")
    assert store.get("a/1") == b"one"
    store.delete("a/1")
    assert store.get("a/1") is None
    assert store.get_many(["a/1", "a/2"]) == [None, None]


def test_scan_stays_inside_prefix_in_both_directions(store) -> None:  # type: ignore[no-untyped-def]
    for k in ("a", "a/1", "a/2", "a/3", "a0", "b/1", "a/\xff"):
        store.put(k, k.encode())
    assert [k for k, _ in store.scan("a/")] == ["a/1", "a/2", "a/3", "a/\xff"]
    assert [k for k, _ in store.scan("a/", reverse=True)] == ["a/\xff", "a/3", "a/2", "a/1"]
    assert [k for k, _ in store.scan("a/", start="a/2", limit=2)] == ["a/2", "a/3"]
    assert [k for k, _ in store.scan("a/", start="a/2", reverse=True)] == ["a/2", "a/1"]
    assert all(v == b"" for _, v in store.scan("a/", keys_only=True))
    assert list(store.scan("zzz/")) == []


def test_scan_range_is_the_scan_between_two_keys(store) -> None:  # type: ignore[no-untyped-def]
    for k in ("a", "a/1", "a/2", "a/3", "a/4", "a0", "b/1"):
        store.put(k, k.encode())
    assert store.scan_range("a/", "a/2", "a/3") == ([b"a/2", b"a/3"], [b"a/2", b"a/3"])
    assert store.scan_range("a/", "a", "a/9")[0] == [b"a/1", b"a/2", b"a/3", b"a/4"]  # not "a"
    assert store.scan_range("a/", "a/2", "b")[0] == [b"a/2", b"a/3", b"a/4"]  # not "a0"
    assert store.scan_range("a/", "a/1", "a/4", limit=2)[0] == [b"a/1", b"a/2"]
    assert store.scan_range("a/", "a/1", "a/4", limit=0) == ([], [])
    assert store.scan_range("a/", "a/3", "a/2") == ([], [])
    assert store.scan_range("zzz/", "zzz/", "zzz/~") == ([], [])


def test_batch_samples_are_written_as_given_and_never_counted(store) -> None:  # type: ignore[no-untyped-def]
    b = Batch()
    b.put("x/1", b"doc")
    b.samples += [(b"ts/00000001/000000000001", b"one"), (b"ts/00000001/000000000001", b"two")]
    assert b
    store.write(b)
    assert store.get("ts/00000001/000000000001") == b"two"  # the later pair wins
    assert store.get("x/1") == b"doc"
    with pytest.raises(ValueError, match="not counted"):
        store.count("ts/00000001/")
    assert not Batch()


def test_file_indexes_are_not_held_beside_the_block_cache(store) -> None:  # type: ignore[no-untyped-def]
    """RocksDB's indexes (~1.6 % of time-series bytes) go through the bounded block cache:
    what stays in memory per open file does not grow with the store."""
    for part in range(4):
        b = Batch()
        b.samples += [(b"ts/%08x/%012x" % (sid, part * 10_000 + t), b"\x00" * 8)
                      for sid in range(200) for t in range(0, 10_000, 10)]
        store.write(b)
        store.flush()
    db = store._db  # noqa: SLF001 - RocksDB's own figures
    sst = db.property_int_value("rocksdb.total-sst-files-size")
    readers = db.property_int_value("rocksdb.estimate-table-readers-mem")
    assert sst > 1_000_000
    assert readers < sst * 0.002, (readers, sst)  # ~1.6 % with RocksDB's defaults


def test_batch_is_atomic_and_cas_refuses_whole_batch(store) -> None:  # type: ignore[no-untyped-def]
    store.put("x/1", b"old")
    b = Batch()
    b.put("x/2", b"new")
    b.expect["x/1"] = b"something else"
    with pytest.raises(Conflict):
        store.write(b)
    assert store.get("x/2") is None  # nothing of the refused batch was written
    b = Batch()
    b.put("x/2", b"new")
    b.delete("x/1")
    b.expect["x/1"] = b"old"
    b.expect["x/3"] = None
    store.write(b)
    assert store.get("x/1") is None and store.get("x/2") == b"new"


def test_count_stays_exact_through_writes(store) -> None:  # type: ignore[no-untyped-def]
    for i in range(10):
        store.put(f"m/o/{i}", b"v")
    assert store.count("m/o/") == 10  # scanned once, then cached
    store.put("m/o/3", b"updated")  # an update does not change the count
    store.put("m/o/new", b"v")
    store.delete("m/o/0")
    store.delete("m/o/missing")
    b = Batch()
    b.put("m/o/a", b"v")
    b.put("m/o/b", b"v")
    b.delete("m/o/1")
    store.write(b)
    assert store.count("m/o/") == sum(1 for _ in store.scan("m/o/")) == 11


def test_second_writer_is_refused_but_readers_see_data(tmp_path: Path) -> None:
    s = open_store(tmp_path / "db")
    s.put("k/1", b"v1")
    with pytest.raises(StoreLocked, match="another process"):
        open_store(tmp_path / "db")
    sec = open_store(tmp_path / "db", "secondary")
    assert sec.get("k/1") == b"v1"
    s.put("k/2", b"v2")
    sec.catch_up()
    assert sec.get("k/2") == b"v2"
    with pytest.raises(StoreLocked):
        sec.put("k/3", b"no")
    sec.close()
    s.close()
    ro = open_store(tmp_path / "db", "ro")
    assert [k for k, _ in ro.scan("k/")] == ["k/1", "k/2"]
    ro.close()


def test_data_survives_reopen_and_checkpoint(tmp_path: Path) -> None:
    s = open_store(tmp_path / "db")
    s.put("k/1", b"v1")
    s.checkpoint(str(tmp_path / "copy"))
    s.put("k/2", b"v2")
    s.close()
    s = open_store(tmp_path / "db")
    assert s.get("k/2") == b"v2"
    s.close()
    c = open_store(tmp_path / "copy")
    assert c.get("k/1") == b"v1" and c.get("k/2") is None
    c.close()


def _options_value(store_dir: Path, name: str) -> str:
    """A value from the newest OPTIONS file RocksDB wrote for the store (what it runs with)."""
    newest = max(store_dir.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
    for line in newest.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == name:
            return value
    raise AssertionError(f"{name} not in {newest}")


def test_memory_settings_bound_the_memtables_and_the_block_cache(tmp_path: Path) -> None:
    """set_memory (settings store_write_buffer_mib, store_cache_mib): a store opened after it
    flushes its memtable at the size given, and the shared block cache holds no more than
    its capacity however much is read; memory() reports both. The defaults come back after."""
    from controller.store.rocks import BLOCK_CACHE_BYTES, WRITE_BUFFER_BYTES, set_memory

    big = open_store(tmp_path / "default")
    try:
        set_memory(cache_bytes=1 << 20, write_buffer_bytes=1 << 20)
        small = open_store(tmp_path / "small")
        try:
            assert _options_value(tmp_path / "small", "write_buffer_size") == str(1 << 20)
            assert _options_value(tmp_path / "default", "write_buffer_size") == \
                str(WRITE_BUFFER_BYTES)
            value = bytes(range(256)) * 16  # 4 KiB, little to compress
            for s in (small, big):
                for n in range(3):  # 3 x 1.2 MiB in separate writes
                    b = Batch()
                    b.samples += [(b"blob/%08x" % (n * 300 + i), value) for i in range(300)]
                    s.write(b)
            assert small.memory()["memtables"] < 2.5 * 2**20
            assert big.memory()["memtables"] > 3 * 2**20  # nothing flushed at 32 MiB
            assert any(tmp_path.joinpath("small").glob("*.sst"))
            small.flush()
            for _ in range(2):  # read every block, twice: the cache keeps 1 MiB of them
                assert sum(len(v) for _, v in small.scan("blob/")) == 900 * 4096
            used = small.memory()["block_cache"]
            assert 0 < used <= 1.1 * 2**20, used
            assert big.memory()["block_cache"] == used  # one cache for the process
        finally:
            small.close()
    finally:
        set_memory()
        big.close()
    assert _options_value(tmp_path / "default", "write_buffer_size") == str(WRITE_BUFFER_BYTES)
    assert BLOCK_CACHE_BYTES == 8 << 20


def _logged_capacities(store_dir: Path) -> list[int]:
    """The block cache capacity RocksDB logged at each open of the store, oldest first."""
    logs = sorted(store_dir.glob("LOG.old.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    return [int(line.split(":")[1]) for log in [*logs, store_dir / "LOG"]
            for line in log.read_text().splitlines() if line.strip().startswith("capacity :")]


def test_a_reopened_store_runs_with_the_options_given_not_those_it_was_made_with(
        tmp_path: Path) -> None:
    """The settings apply to an existing store too: reopened with other memory settings, it
    uses them (rocksdict would otherwise reopen it with its stored options and a block
    cache of RocksDB's default size instead of the process's shared one); the same in
    read-only and secondary opens."""
    from controller.store.rocks import set_memory

    try:
        set_memory(cache_bytes=16 << 20, write_buffer_bytes=8 << 20)
        open_store(tmp_path / "db").close()
        set_memory(cache_bytes=32 << 20, write_buffer_bytes=16 << 20)
        s = open_store(tmp_path / "db")
        assert _options_value(tmp_path / "db", "write_buffer_size") == str(16 << 20)
        s.put("k", b"v")
        s.flush()
        for mode in ("ro", "secondary"):
            other = open_store(tmp_path / "db", mode)
            try:
                assert other.get("k") == b"v"
            finally:
                other.close()
        s.close()
    finally:
        set_memory()
    capacities = _logged_capacities(tmp_path / "db")
    assert capacities[:2] == [16 << 20, 32 << 20], capacities
    assert set(capacities) == {16 << 20, 32 << 20}, capacities  # never a cache of its own


def test_a_cursor_reads_as_the_store_did_when_it_was_made(store) -> None:  # type: ignore[no-untyped-def]
    """Ranges, first keys and gets through one cursor answer as scan_range, scan and get
    do, and see the store as it was when the cursor was made."""
    for k in ("a", "a/1", "a/2", "a/3", "a0", "b/1"):
        store.put(k, k.encode())
    c = store.cursor()
    try:
        for args in (("a/", "a/", "a/~"), ("a/", "a/2", "a/3"), ("a/", "a", "b"), ("b/", "b/", "b/~"),
                     ("c/", "c/", "c/~"), ("a/", "a/3", "a/1")):
            assert c.range(*args) == store.scan_range(*args), args
        assert c.range("a/", "a/", "a/~", limit=2) == store.scan_range("a/", "a/", "a/~", limit=2)
        assert c.range("a/", "a/", "a/~", limit=0) == ([], [])
        assert c.first_key("a/", "a/15") == "a/2"
        assert c.first_key("a/", "") == "a/1"
        assert c.first_key("a/", "a/4") is None
        assert c.get("a/2") == b"a/2"
        assert c.get("a/22") is None
        store.put("a/4", b"new")
        store.delete("a/1")
        assert c.get("a/4") is None and c.get("a/1") == b"a/1"
        assert c.range("a/", "a/", "a/~")[0] == [b"a/1", b"a/2", b"a/3"]
    finally:
        c.close()
    assert store.cursor().range("a/", "a/", "a/~")[0] == [b"a/2", b"a/3", b"a/4"]
