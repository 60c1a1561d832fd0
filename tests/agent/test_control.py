"""Reconnection backoff: exponential, capped, and jittered so a fleet spreads out; batches in
the protocol's compact form."""

from __future__ import annotations

import itertools
import random
import statistics

from agent import control
from agent.control import BACKOFF_MAX, BACKOFF_MIN, backoff_delays
from overcast.agent.v1 import agent_pb2 as pb


def test_backoff_grows_to_the_cap_and_never_exceeds_it() -> None:
    delays = list(itertools.islice(backoff_delays(random.Random(1)), 40))
    assert all(BACKOFF_MIN / 2 <= d <= BACKOFF_MAX for d in delays)
    assert max(delays[:3]) <= 4 * BACKOFF_MIN  # starts small
    assert max(delays[-10:]) > BACKOFF_MAX / 2  # and reaches the cap's range


def test_a_fleet_reconnecting_together_is_spread_out() -> None:
    # 10,000 agents losing the controller at the same moment: their 6th attempts are spread
    # over the whole window instead of landing together
    sixth = [next(itertools.islice(backoff_delays(random.Random(i)), 5, None)) for i in range(10_000)]
    assert statistics.pstdev(sixth) > 5
    buckets = [0] * 8
    for d in sixth:
        buckets[min(7, int(d / (max(sixth) / 8)))] += 1
    assert max(buckets) < 2 * min(buckets) + 200  # roughly uniform, no spike


def _batch(seq: int, rows: list[tuple[str, dict[str, str], float, int]]) -> pb.MetricBatch:
    return pb.MetricBatch(seq=seq, dropped=2, samples=[
        pb.Sample(metric=m, labels=labels, value=v, time_ms=t) for m, labels, v, t in rows])


def _expand(batches: list[pb.MetricBatch]) -> list[list[tuple[str, dict[str, str], float, int]]]:
    """What a controller makes of compact batches of one stream: the samples again."""
    series: dict[int, tuple[str, dict[str, str]]] = {}
    out = []
    for b in batches:
        for d in b.series:
            assert d.ref == len(series)  # numbered from 0, in order, once each
            series[d.ref] = (d.metric, dict(d.labels))
        assert len(b.refs) == len(b.values)
        rows = [(*series[r], v, b.time_ms) for r, v in zip(b.refs, b.values, strict=True)]
        rows += [(s.metric, dict(s.labels), s.value, s.time_ms) for s in b.samples]
        out.append(sorted(rows, key=repr))
    return out


def test_the_compact_form_says_what_the_samples_say() -> None:
    t = 1_800_000_000_000
    first = _batch(7, [("cpu_usage_idle", {"cpu": "cpu-total"}, 97.5, t),
                       ("cpu_usage_idle", {"cpu": "cpu0"}, 96.0, t),
                       ("mem_used_percent", {}, 41.0, t),
                       ("late", {"b": "2", "a": "1"}, 1.0, t + 5),  # another time: as it is
                       ("", {}, 3.0, t)])  # no metric: as it is (the controller drops it)
    second = _batch(8, [("mem_used_percent", {}, 42.0, t + 10_000),
                        ("cpu_usage_idle", {"cpu": "cpu0"}, 95.0, t + 10_000),
                        ("disk_free", {"path": "/"}, 5e9, t + 10_000)])
    table: control.SeriesTable = {}
    wire = [control.compact_batch(first, table), control.compact_batch(second, table)]
    assert [(w.seq, w.dropped) for w in wire] == [(7, 2), (8, 2)]
    assert [len(w.series) for w in wire] == [3, 1]  # each series defined once on the stream
    assert len(wire[0].samples) == 2 and not wire[1].samples
    assert _expand(wire) == _expand([first, second])
    # smaller on the wire once the series are defined
    assert wire[1].ByteSize() < second.ByteSize()
    # a new stream defines them again
    again = control.compact_batch(second, {})
    assert len(again.series) == 3 and _expand([again]) == _expand([second])
    assert control.compact_batch(pb.MetricBatch(seq=9), {}) == pb.MetricBatch(seq=9)
