"""The embedded TSDB and the datapoints query: interning, ordering, retention, matchers,
instant vectors and range matrices."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from controller.errors import BadRequest
from controller.monitor.query import evaluate, parse
from controller.monitor.tsdb import TSDB, legacy_key, sample_key
from controller.store import Batch, open_store

T0 = 1_700_000_000_000  # ms (13 min 20 s into an hour)
HOUR = 3_600_000
NEXT_HOUR = T0 - T0 % HOUR + HOUR


@pytest.fixture
def tsdb(tmp_path: Path) -> TSDB:
    db = TSDB(open_store(tmp_path / "db"))
    b = Batch()
    for i in range(60):  # one sample every 10 s for 10 minutes, two machines, two orgs
        t = T0 + i * 10_000
        db.add(b, "o1", [("system_load1", {"machine_id": "m1"}, float(i), t),
                         ("system_load1", {"machine_id": "m2"}, 100.0 + i, t),
                         ("net_bytes_sent", {"machine_id": "m1", "interface": "eth0"}, i * 1000.0, t)])
        db.add(b, "o2", [("system_load1", {"machine_id": "x"}, -1.0, t)])
    db.store.write(b)
    return db


def test_series_are_interned_once_and_survive_reopen(tsdb: TSDB, tmp_path: Path) -> None:
    assert tsdb.series_count == 4
    b = Batch()
    tsdb.add(b, "o1", [("system_load1", {"machine_id": "m1"}, 5.0, T0)])  # same series
    assert tsdb.series_count == 4
    tsdb.store.close()
    again = TSDB(open_store(tmp_path / "db"))
    assert again.series_count == 4
    assert again.metrics("o1") == ["net_bytes_sent", "system_load1"]


def test_replayed_samples_overwrite_instead_of_doubling(tsdb: TSDB) -> None:
    (s,) = [s for s in tsdb.select("o1", "system_load1") if s.labels["machine_id"] == "m1"]
    b = Batch()
    tsdb.add(b, "o1", [("system_load1", {"machine_id": "m1"}, 7.0, T0 + 70_000)])
    tsdb.store.write(b)
    points = list(tsdb.read(s.sid, T0, T0 + 600_000))
    assert len(points) == 60 and dict(points)[T0 + 70_000] == 7.0


def test_instant_vector_is_per_organisation_with_matchers(tsdb: TSDB) -> None:
    at = str((T0 + 595_000) / 1000)
    r = evaluate(tsdb, "o1", "system_load1", at=at)["data"]
    assert r["resultType"] == "vector"
    assert {x["metric"]["machine_id"]: x["value"][1] for x in r["result"]} == {"m1": "59", "m2": "159"}
    r = evaluate(tsdb, "o1", 'system_load1{machine_id!="m1"}', at=at)["data"]
    assert [x["metric"]["machine_id"] for x in r["result"]] == ["m2"]
    r = evaluate(tsdb, "o1", 'system_load1{machine_id=~"m[12]"}', at=at)["data"]
    assert len(r["result"]) == 2
    assert evaluate(tsdb, "o2", "system_load1", at=at)["data"]["result"][0]["value"][1] == "-1"
    # older than the 5-minute lookback: nothing
    assert evaluate(tsdb, "o1", "system_load1", at=str((T0 + 3_600_000) / 1000))["data"]["result"] == []


def test_range_matrix_steps_through_the_window(tsdb: TSDB) -> None:
    r = evaluate(tsdb, "o1", 'net_bytes_sent{interface="eth0"}', start=str(T0 / 1000),
                 end=str((T0 + 60_000) / 1000), step="20s")["data"]
    assert r["resultType"] == "matrix"
    assert r["result"][0]["values"] == [(T0 / 1000, "0"), (T0 / 1000 + 20, "2000"),
                                        (T0 / 1000 + 40, "4000"), (T0 / 1000 + 60, "6000")]


def test_retention_drops_whole_hours_before_the_cutoff(tsdb: TSDB) -> None:
    (s,) = [s for s in tsdb.select("o1", "system_load1") if s.labels["machine_id"] == "m1"]
    b = Batch()
    tsdb.add(b, "o1", [("system_load1", {"machine_id": "m1"}, 7.0, NEXT_HOUR + 5_000)])
    tsdb.store.write(b)
    assert tsdb.expire(T0 + 300_000) == 0  # the cutoff's hour is kept whole
    assert len(list(tsdb.read(s.sid, 0, T0 + 10**9))) == 61
    assert tsdb.expire(NEXT_HOUR + 10_000) == NEXT_HOUR // HOUR
    assert list(tsdb.read(s.sid, 0, T0 + 10**9)) == [(NEXT_HOUR + 5_000, 7.0)]
    assert tsdb.last_before(s.sid, NEXT_HOUR, 2 * HOUR) is None


def test_retention_leaves_no_tombstone_where_nothing_is_old(tsdb: TSDB) -> None:
    """A range deletion is a tombstone RocksDB holds in memory: retention with nothing
    before the cutoff writes nothing at all; with something, one for all series."""
    db: Any = tsdb.store._db  # noqa: SLF001 - RocksDB's own count of memtable entries
    entries = db.property_int_value("rocksdb.num-entries-active-mem-table")
    assert tsdb.expire(T0 + 300_000) == 0  # every sample is in the cutoff's hour
    assert db.property_int_value("rocksdb.num-entries-active-mem-table") == entries
    assert tsdb.expire(NEXT_HOUR) > 0
    assert db.property_int_value("rocksdb.num-entries-active-mem-table") == entries + 1


def test_samples_are_partitioned_by_hour_and_read_across_hours(tsdb: TSDB) -> None:
    (s,) = [s for s in tsdb.select("o1", "system_load1") if s.labels["machine_id"] == "m1"]
    b = Batch()
    later = [NEXT_HOUR - 5_000, NEXT_HOUR, NEXT_HOUR + HOUR + 1]  # three hours, one empty between
    tsdb.add(b, "o1", [("system_load1", {"machine_id": "m1"}, float(i), t)
                       for i, t in enumerate(later)])
    tsdb.store.write(b)
    assert tsdb.store.get(sample_key(s.sid, NEXT_HOUR)) is not None
    assert sample_key(s.sid, NEXT_HOUR).startswith(f"tsr/{NEXT_HOUR // HOUR:06x}/{s.sid:08x}/")
    times, values = tsdb.read_columns(s.sid, T0 + 590_000, NEXT_HOUR + 2 * HOUR)
    assert times == [T0 + 590_000, *later] and values == [59.0, 0.0, 1.0, 2.0]
    # a range from 0 reads the hours that hold samples, not the 490,000 before them
    reads = 0
    scan_range = tsdb.store.scan_range

    def counted(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return scan_range(*args)

    tsdb.store.scan_range = counted  # type: ignore[method-assign]
    assert tsdb.read_columns(s.sid, 0, 2**46)[0] == [T0 + i * 10_000 for i in range(60)] + later
    assert reads <= 4
    limited = tsdb.read_columns(s.sid, T0, NEXT_HOUR + 2 * HOUR, limit=62)[0]
    assert len(limited) == 62 and limited[-2:] == later[:2]  # the limit across hours
    assert tsdb.last_before(s.sid, NEXT_HOUR + HOUR, HOUR) == (NEXT_HOUR, 1.0)
    assert tsdb.last_before(s.sid, NEXT_HOUR + HOUR + 1, 10) == (NEXT_HOUR + HOUR + 1, 2.0)
    # a rollup's read: the samples of its range and the value before, an hour back at most
    assert tsdb.read_after(s.sid, NEXT_HOUR, NEXT_HOUR + 10) == (0.0, [NEXT_HOUR], [1.0])
    assert tsdb.read_after(s.sid, NEXT_HOUR + HOUR, NEXT_HOUR + 2 * HOUR) == (
        1.0, [NEXT_HOUR + HOUR + 1], [2.0])
    assert tsdb.read_after(s.sid, NEXT_HOUR + HOUR + 2, NEXT_HOUR + 2 * HOUR) == (2.0, [], [])
    assert tsdb.read_after(s.sid, NEXT_HOUR + 3 * HOUR, NEXT_HOUR + 4 * HOUR) == (None, [], [])


def test_a_store_from_before_hour_partitions_is_read_until_retention_drops_it(
        tmp_path: Path) -> None:
    """Samples stored as ``ts/<sid>/<time>`` (before hour partitions) are read beside new
    ones, not copied; retention deletes them by series, and once none are left the TSDB
    stops looking."""
    store = open_store(tmp_path / "old")
    db = TSDB(store)
    b = Batch()
    db.add(b, "o1", [("load", {"machine_id": "m1"}, 1.0, T0)])  # makes the series
    store.write(b)
    (sid,) = db.sids()
    store.delete_range("tsr/", "tss")
    old = Batch()
    old.samples += [(legacy_key(sid, T0 + i * 10_000).encode(), struct.pack(">d", float(i)))
                    for i in range(6)]
    store.write(old)
    db = TSDB(store)
    assert db.legacy
    b = Batch()
    db.add(b, "o1", [("load", {"machine_id": "m1"}, 9.0, T0 + 30_000),  # replaces one
                     ("load", {"machine_id": "m1"}, 10.0, T0 + 60_000)])
    store.write(b)
    assert db.read_columns(sid, T0, T0 + HOUR) == (
        [T0 + i * 10_000 for i in range(7)], [0.0, 1.0, 2.0, 9.0, 4.0, 5.0, 10.0])
    assert db.read_columns(sid, T0, T0 + HOUR, limit=2) == ([T0, T0 + 10_000], [0.0, 1.0])
    assert db.last_before(sid, T0 + 59_999, HOUR) == (T0 + 50_000, 5.0)
    assert db.read_after(sid, T0 + 60_000, T0 + HOUR) == (5.0, [T0 + 60_000], [10.0])
    assert db.expire_legacy(T0 + 25_000, [sid]) == 1
    assert db.read_columns(sid, 0, T0 + 25_000)[0] == []  # the new layout has none there
    assert db.check_legacy()
    assert db.expire_legacy(T0 + HOUR, [sid]) == 1 and not db.check_legacy()
    assert db.read_columns(sid, T0, T0 + HOUR) == ([T0 + 30_000, T0 + 60_000], [9.0, 10.0])
    assert not TSDB(store).legacy


@pytest.mark.parametrize("query", ["", "1abc", "cpu{", 'cpu{a="b"', 'cpu{a=b}', 'cpu{a=~"("}',
                                   "rate(1)", "cpu[5m]", 'cpu{a="b"} extra'])
def test_bad_queries_name_the_parameter(query: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse(query)
    assert e.value.details["field"] == "query"


def test_bad_times_and_steps_name_the_parameter(tsdb: TSDB) -> None:
    for kwargs, field in (({"start": "yesterday"}, "start"), ({"step": "fast"}, "step"),
                          ({"start": "100", "end": "50"}, "start"),
                          ({"start": "0", "end": "1000000", "step": "1s"}, "step")):
        with pytest.raises(BadRequest) as e:
            evaluate(tsdb, "o1", "system_load1", **kwargs)
        assert e.value.details["field"] == field
