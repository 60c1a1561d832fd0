"""Evaluating queries against known samples on a real store: Prometheus's rate/increase
(extrapolation, counter resets), irate, the *_over_time functions, aggregations by and
without labels, arithmetic and comparisons with numbers, the lookback, organisations kept
apart, the REST shapes, and the limits of one query (samples, time)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from controller.errors import BadRequest, Invalid
from controller.monitor import source
from controller.monitor.query import evaluate, instant, range_query
from controller.monitor.tsdb import TSDB
from controller.store import Batch, open_store

T0 = 1_700_000_000_000  # ms
S0 = T0 / 1000
# a counter sampled every 10 s that resets after 50: 0..50, then 5..65
COUNTER = [0, 10, 20, 30, 40, 50, 5, 15, 25, 35, 45, 55, 65]


@pytest.fixture
def tsdb(tmp_path: Path) -> TSDB:
    db = TSDB(open_store(tmp_path / "db"))
    b = Batch()
    for i, v in enumerate(COUNTER):
        t = T0 + i * 10_000
        db.add(b, "o1", [("net_bytes_recv", {"machine_id": "m1", "interface": "eth0"}, float(v), t),
                         ("net_bytes_recv", {"machine_id": "m1", "interface": "eth1"}, 2.0 * i, t)])
    for i in range(60):  # 10 minutes: two machines, two CPUs each
        t = T0 + i * 10_000
        db.add(b, "o1", [("cpu_usage_idle", {"machine_id": "m1", "cpu": "cpu0"}, 90.0, t),
                         ("cpu_usage_idle", {"machine_id": "m1", "cpu": "cpu1"}, 70.0, t),
                         ("cpu_usage_idle", {"machine_id": "m2", "cpu": "cpu0"}, 10.0 + i, t)])
        db.add(b, "o2", [("cpu_usage_idle", {"machine_id": "x", "cpu": "cpu0"}, 1.0, t)])
    db.store.write(b)
    return db


def one(db: TSDB, query: str, at_s: float, org: str = "o1") -> dict[str, float]:
    """An instant query: each series' value by its labels."""
    return {",".join(f"{k}={v}" for k, v in sorted(s.labels.items())): s.value
            for s in instant(db, org, query, at_s)}


def test_rate_and_increase_extrapolate_and_count_resets_as_prometheus(tsdb: TSDB) -> None:
    # (T0, T0+120]: samples 10..65 at 10..120 s with one reset (50 -> 5): raw change 55,
    # plus 50 for the reset = 105 over 110 s, extrapolated by 10 s to the window's start
    # (less than 1.1 sample intervals; a counter would reach zero only 10.5 s before)
    at = S0 + 120
    assert one(tsdb, 'increase(net_bytes_recv{interface="eth0"}[2m])', at) == {
        "interface=eth0,machine_id=m1": pytest.approx(105 * 120 / 110)}
    assert one(tsdb, 'rate(net_bytes_recv{interface="eth0"}[2m])', at) == {
        "interface=eth0,machine_id=m1": pytest.approx(105 / 110)}
    # a window ending far from the last sample extrapolates half an interval there: samples
    # 8..24 at 40..120 s in (30, 150]: 16 over 80 s, plus 10 s to the start, 5 s to the end
    late = one(tsdb, 'increase(net_bytes_recv{interface="eth1"}[2m])', S0 + 150)
    assert late == {"interface=eth1,machine_id=m1": pytest.approx(16 * 95 / 80)}
    # a counter is not extrapolated below zero: from 0 at T0 it starts at T0, not 5 s before
    assert one(tsdb, 'increase(net_bytes_recv{interface="eth0"}[2m])', S0 + 20) == {
        "interface=eth0,machine_id=m1": 20.0}
    # fewer than two samples in the window: no value
    assert one(tsdb, "rate(net_bytes_recv[5s])", S0 + 120) == {}


def test_irate_uses_the_last_two_samples_across_a_reset(tsdb: TSDB) -> None:
    q = 'irate(net_bytes_recv{interface="eth0"}[1m])'
    assert one(tsdb, q, S0 + 120) == {"interface=eth0,machine_id=m1": 1.0}  # 55 -> 65 in 10 s
    assert one(tsdb, q, S0 + 60) == {"interface=eth0,machine_id=m1": 0.5}  # 50 -> 5: a reset


def test_over_time_functions(tsdb: TSDB) -> None:
    m2 = 'cpu_usage_idle{machine_id="m2"}'
    at = S0 + 590  # the window (530, 590]: values 64..69 (530 s itself is out)
    key = "cpu=cpu0,machine_id=m2"
    assert one(tsdb, f"avg_over_time({m2}[1m])", at) == {key: 66.5}
    assert one(tsdb, f"min_over_time({m2}[1m])", at) == {key: 64.0}
    assert one(tsdb, f"max_over_time({m2}[1m])", at) == {key: 69.0}
    assert one(tsdb, f"sum_over_time({m2}[1m])", at) == {key: sum(range(64, 70))}
    assert one(tsdb, f"count_over_time({m2}[1m])", at) == {key: 6.0}


def test_aggregations_by_and_without_labels(tsdb: TSDB) -> None:
    at = S0 + 590  # m2's cpu0 is 69
    assert one(tsdb, "sum by (machine_id) (cpu_usage_idle)", at) == {
        "machine_id=m1": 160.0, "machine_id=m2": 69.0}
    assert one(tsdb, "avg(cpu_usage_idle) by (machine_id)", at) == {
        "machine_id=m1": 80.0, "machine_id=m2": 69.0}
    assert one(tsdb, "max without (cpu) (cpu_usage_idle)", at) == {
        "machine_id=m1": 90.0, "machine_id=m2": 69.0}
    assert one(tsdb, "min by (cpu) (cpu_usage_idle)", at) == {"cpu=cpu0": 69.0, "cpu=cpu1": 70.0}
    assert one(tsdb, "count(cpu_usage_idle)", at) == {"": 3.0}
    assert one(tsdb, "sum by (nope) (cpu_usage_idle)", at) == {"": 229.0}
    # an aggregation of a range function: per-machine receive rate over both interfaces
    assert one(tsdb, "sum by (machine_id) (rate(net_bytes_recv[2m]))", S0 + 120) == {
        "machine_id=m1": pytest.approx(105 / 110 + 0.2)}


def test_arithmetic_and_comparisons_with_numbers(tsdb: TSDB) -> None:
    at = S0 + 590
    assert one(tsdb, '100 - cpu_usage_idle{machine_id="m1"}', at) == {
        "cpu=cpu0,machine_id=m1": 10.0, "cpu=cpu1,machine_id=m1": 30.0}  # the name is dropped
    assert one(tsdb, 'cpu_usage_idle{cpu="cpu1"} / 7 * 2 ^ 2 - -1 % 3', at) == {
        "cpu=cpu1,machine_id=m1": pytest.approx(70 / 7 * 4 + 1)}
    # a comparison filters and keeps the name; with bool it answers 0 or 1
    assert one(tsdb, "cpu_usage_idle > 75", at) == {
        "__name__=cpu_usage_idle,cpu=cpu0,machine_id=m1": 90.0}
    assert one(tsdb, "80 < cpu_usage_idle", at) == {
        "__name__=cpu_usage_idle,cpu=cpu0,machine_id=m1": 90.0}
    assert one(tsdb, "100 - cpu_usage_idle >= bool 30", at) == {
        "cpu=cpu0,machine_id=m1": 0.0, "cpu=cpu1,machine_id=m1": 1.0, "cpu=cpu0,machine_id=m2": 1.0}
    assert one(tsdb, '-cpu_usage_idle{machine_id="m2"}', at) == {"cpu=cpu0,machine_id=m2": -69.0}
    r = one(tsdb, 'cpu_usage_idle{machine_id="m2"} / 0', at)
    assert r == {"cpu=cpu0,machine_id=m2": float("inf")}
    assert evaluate(tsdb, "o1", 'cpu_usage_idle{machine_id="m2"} / 0', at=str(at))["data"][
        "result"][0]["value"][1] == "+Inf"


def test_instant_selector_looks_back_five_minutes_and_answers_at_the_query_time(tsdb: TSDB) -> None:
    q = 'cpu_usage_idle{machine_id="m2"}'
    r = evaluate(tsdb, "o1", q, at=str(S0 + 590 + 299))["data"]  # the last sample: 590 s
    assert r["resultType"] == "vector"
    assert r["result"] == [{"metric": {"__name__": "cpu_usage_idle", "machine_id": "m2", "cpu": "cpu0"},
                            "value": [S0 + 889, "69"]}]
    assert evaluate(tsdb, "o1", q, at=str(S0 + 590 + 300))["data"]["result"] == []


def test_organisations_and_machines_are_kept_apart(tsdb: TSDB) -> None:
    at = S0 + 590
    assert one(tsdb, "cpu_usage_idle", at, org="o2") == {"__name__=cpu_usage_idle,cpu=cpu0,machine_id=x": 1.0}
    assert one(tsdb, "sum(cpu_usage_idle)", at, org="o3") == {}
    got = instant(tsdb, "o1", "sum(cpu_usage_idle)", at, machine_ids={"m2"})
    assert [s.value for s in got] == [69.0]


def test_range_matrix_of_a_rate_steps_through_the_window(tsdb: TSDB) -> None:
    series = range_query(tsdb, "o1", 'irate(net_bytes_recv{interface="eth0"}[30s])',
                         S0 + 20, S0 + 80, 20)
    assert [s.labels for s in series] == [{"machine_id": "m1", "interface": "eth0"}]
    assert series[0].points == [(S0 + 20, 1.0), (S0 + 40, 1.0), (S0 + 60, 0.5), (S0 + 80, 1.0)]
    r = evaluate(tsdb, "o1", 'net_bytes_recv{interface="eth1"}', start=str(S0), end=str(S0 + 60),
                 step="20s")["data"]
    assert r["resultType"] == "matrix"
    assert r["result"][0]["values"] == [(S0, "0"), (S0 + 20, "4"), (S0 + 40, "8"), (S0 + 60, "12")]


def test_a_plain_number_and_too_many_series_are_refused(tsdb: TSDB, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Invalid) as e:
        instant(tsdb, "o1", "1 + 1", S0)
    assert e.value.status == 422 and e.value.details["field"] == "query"
    monkeypatch.setattr(source, "MAX_SERIES", 2)
    with pytest.raises(Invalid) as e:
        instant(tsdb, "o1", "cpu_usage_idle", S0 + 10)
    assert "more than 2 series" in e.value.message


def test_bad_times_and_steps_name_the_parameter(tsdb: TSDB) -> None:
    for kwargs, field in (({"start": "yesterday"}, "start"), ({"step": "fast"}, "step"),
                          ({"start": "100", "end": "50"}, "start"), ({"at": "nan"}, "time"),
                          ({"start": "0", "end": "1000000", "step": "1s"}, "step"),
                          ({"step": "0s"}, "step")):
        with pytest.raises(BadRequest) as e:
            evaluate(tsdb, "o1", "cpu_usage_idle", **kwargs)  # type: ignore[arg-type]
        assert e.value.details["field"] == field, kwargs


def test_a_query_over_the_samples_budget_stops_reading_and_says_how_to_narrow_it(
        tsdb: TSDB, monkeypatch: pytest.MonkeyPatch) -> None:
    """query_max_samples: samples read plus points computed; the reads stop at the budget
    (one more sample than it allows), not after the whole selection."""
    read: list[int] = []
    real = tsdb.read_columns

    def counting(sid: int, start: int, end: int, limit: int | None = None) -> tuple[list[int], list[float]]:
        ts, vals = real(sid, start, end, limit)
        read.append(len(ts))
        return ts, vals

    monkeypatch.setattr(tsdb, "read_columns", counting)
    q = "count_over_time(cpu_usage_idle[11m])"  # 3 series x 60 samples, 1 point each
    assert len(instant(tsdb, "o1", q, S0 + 600)) == 3 and sum(read) == 180
    tsdb.query_max_samples = 100
    read.clear()
    with pytest.raises(Invalid) as e:
        instant(tsdb, "o1", q, S0 + 600)
    assert e.value.status == 422
    assert e.value.details == {"field": "query", "limit": "query_max_samples"}
    assert "more than 100 samples" in e.value.message and "narrow it" in e.value.message
    assert sum(read) <= 100 + 1 and len(read) == 2  # 61 + 40: the second read stopped
    # points count too: 601 steps of 3 series over 60 samples each
    tsdb.query_max_samples = 1000
    with pytest.raises(Invalid) as e:
        evaluate(tsdb, "o1", "cpu_usage_idle", start=str(S0), end=str(S0 + 600), step="1s")
    assert e.value.details["limit"] == "query_max_samples"
    assert evaluate(tsdb, "o1", "cpu_usage_idle", start=str(S0), end=str(S0 + 600),
                    step="10s")["data"]["result"]  # 3 x (61 + 61): within it


def test_a_query_past_its_time_stops_between_reads(tsdb: TSDB,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """query_timeout: looked at as samples are read; the rest is not read."""
    import time

    reads = []
    real = tsdb.read_columns

    def slow(sid: int, start: int, end: int, limit: int | None = None) -> tuple[list[int], list[float]]:
        reads.append(sid)
        time.sleep(0.15)
        return real(sid, start, end, limit)

    monkeypatch.setattr(tsdb, "read_columns", slow)
    tsdb.query_timeout = 0.2
    with pytest.raises(Invalid) as e:
        instant(tsdb, "o1", "cpu_usage_idle", S0 + 600)
    assert e.value.status == 422 and e.value.details == {"field": "query",
                                                         "limit": "query_timeout"}
    assert "longer than 0.2 s" in e.value.message and "query_timeout" in e.value.message
    assert len(reads) == 2  # of 3 series
    tsdb.query_timeout = 30.0
    assert len(instant(tsdb, "o1", "cpu_usage_idle", S0 + 600)) == 3


def test_rate_without_a_range_reads_five_minutes_as_the_mist_spec_writes_it(tsdb: TSDB) -> None:
    at = S0 + 120
    assert one(tsdb, 'rate(net_bytes_recv{interface="eth0"})', at) == one(
        tsdb, 'rate(net_bytes_recv{interface="eth0"}[5m])', at)
    assert one(tsdb, "max_over_time(cpu_usage_idle)", S0 + 590) == {
        "cpu=cpu0,machine_id=m1": 90.0, "cpu=cpu1,machine_id=m1": 70.0,
        "cpu=cpu0,machine_id=m2": 10.0 + 59}


def test_values_are_written_as_the_shortest_text_of_the_same_double() -> None:
    """The answer's strings (orjson's formatter, the digits repr gives): every one reads back
    as the very same double; whole numbers without ".0"; the same one at a time and in bulk."""
    import random

    from controller.monitor.query import _fmt, _texts

    rng = random.Random(7)
    vals = [rng.uniform(0, 100) for _ in range(2000)] + [
        rng.lognormvariate(0, 30) for _ in range(2000)] + [
        0.0, -0.0, 1.0, 10.0, 100.0, -3.0, 0.5, 0.1, 1e16, 1.5e16, 1e-5, 5e-324,
        1.7976931348623157e308, 123456789012345.6, 2.0 ** 60]
    texts = _texts(vals)
    assert texts == [_fmt(v) for v in vals]
    assert all(float(t) == v and str(float(t)) == str(v) for t, v in zip(texts, vals, strict=True))
    assert texts[-15:-8] == ["0", "-0", "1", "10", "100", "-3", "0.5"]
    assert not any(t.endswith(".0") for t in texts)
    assert [_fmt(v) for v in (math.nan, math.inf, -math.inf)] == ["NaN", "+Inf", "-Inf"]
    assert _texts([]) == []
