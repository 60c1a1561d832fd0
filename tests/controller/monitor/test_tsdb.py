"""The embedded TSDB and the datapoints query: interning, ordering, retention, matchers,
instant vectors and range matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.errors import BadRequest
from controller.monitor.query import evaluate, parse
from controller.monitor.tsdb import TSDB
from controller.store import Batch, open_store

T0 = 1_700_000_000_000  # ms


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


def test_retention_drops_old_samples_only(tsdb: TSDB) -> None:
    tsdb.expire(T0 + 300_000)
    (s,) = [s for s in tsdb.select("o1", "system_load1") if s.labels["machine_id"] == "m1"]
    points = list(tsdb.read(s.sid, 0, T0 + 10**9))
    assert len(points) == 30 and points[0][0] == T0 + 300_000


def test_retention_leaves_no_tombstone_where_nothing_is_old(tsdb: TSDB) -> None:
    """A range deletion is a tombstone RocksDB holds in memory: retention over series with
    nothing before the cutoff writes nothing at all."""
    db: Any = tsdb.store._db  # noqa: SLF001 - RocksDB's own count of memtable entries
    entries = db.property_int_value("rocksdb.num-entries-active-mem-table")
    assert tsdb.expire(T0) == 0  # every sample is at T0 or later
    assert db.property_int_value("rocksdb.num-entries-active-mem-table") == entries
    assert tsdb.expire(T0 + 300_000) > 0
    assert db.property_int_value("rocksdb.num-entries-active-mem-table") > entries


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
