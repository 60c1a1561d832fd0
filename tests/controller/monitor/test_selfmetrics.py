"""The self-metrics registry: counters, gauges, histograms and scrape-time callbacks rendered
in the Prometheus text format (parsed back here with a strict reader), registration rules,
escaping, and a failing callback that does not fail the scrape."""

from __future__ import annotations

import math
import threading

import pytest

from controller.monitor.selfmetrics import SelfMetrics
from tests.controller.monitor.exposition import parse_exposition


def test_counters_gauges_and_histograms_render_and_parse_back() -> None:
    m = SelfMetrics()
    c = m.counter("jobs_done_total", "Jobs done", ("outcome",))
    c.inc(outcome="ok")
    c.inc(2, outcome="ok")
    c.inc(outcome='fail "x"\nback\\slash')
    g = m.gauge("queue_depth", "Queued")
    g.set(5)
    g.dec(2)
    h = m.histogram("poll_seconds", "Polls", ("provider",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 0.7, 3.0):
        h.observe(v, provider="aws")
    m.gauge_fn("agents", "Agents", lambda: {("o1",): 3, ("o2",): 1}, ("org",))
    m.counter_fn("samples_total", "Samples", lambda: {(): 12345678901234.0})
    types, values = parse_exposition(m.render())
    assert types == {"agents": "gauge", "jobs_done_total": "counter", "poll_seconds": "histogram",
                     "queue_depth": "gauge", "samples_total": "counter"}
    assert values[("jobs_done_total", frozenset({("outcome", "ok")}))] == 3
    assert values[("jobs_done_total", frozenset({("outcome", 'fail "x"\nback\\slash')}))] == 1
    assert values[("queue_depth", frozenset())] == 3
    aws = ("provider", "aws")
    assert [values[("poll_seconds_bucket", frozenset({aws, ("le", le)}))]
            for le in ("0.1", "1", "+Inf")] == [1, 3, 4]
    assert values[("poll_seconds_count", frozenset({aws}))] == 4
    assert values[("poll_seconds_sum", frozenset({aws}))] == pytest.approx(4.25)
    assert values[("agents", frozenset({("org", "o1")}))] == 3
    assert values[("samples_total", frozenset())] == 12345678901234
    text = m.render()
    assert text.index("# HELP agents Agents\n# TYPE agents gauge\n") == 0  # name order
    assert "poll_seconds_bucket" in text.split("poll_seconds_sum")[0]  # buckets first


def test_registration_is_idempotent_for_the_same_shape_only() -> None:
    m = SelfMetrics()
    a = m.counter("x_total", "X", ("a",))
    assert m.counter("x_total", "X again", ("a",)) is a and "x_total" in m
    for bad in (lambda: m.gauge("x_total", "X"), lambda: m.counter("x_total", "X", ("b",))):
        with pytest.raises(ValueError):
            bad()
    m.gauge_fn("y", "Y", lambda: {(): 1})
    m.gauge_fn("y", "Y", lambda: {(): 2})  # a restarted component: the newer reader wins
    assert parse_exposition(m.render())[1][("y", frozenset())] == 2
    for name, labels in (("1bad", ()), ("ok", ("__reserved",)), ("ok", ("le",)), ("ok", ("a-b",))):
        with pytest.raises(ValueError):
            m.counter(name, "bad", labels)
    with pytest.raises(ValueError):
        a.inc(-1, a="v")
    with pytest.raises(ValueError):
        a.inc(b="v")


def test_a_failing_callback_leaves_its_metric_out_only() -> None:
    m = SelfMetrics()
    m.gauge_fn("broken", "Broken", lambda: {(): 1 / 0})
    m.gauge("fine", "Fine").set(math.inf)
    text = m.render()
    assert "# broken not collected: ZeroDivisionError" in text
    assert parse_exposition(text)[1] == {("fine", frozenset()): math.inf}


def test_updates_from_many_threads_are_all_counted() -> None:
    m = SelfMetrics()
    c = m.counter("n_total", "N")
    h = m.histogram("h_seconds", "H")

    def work() -> None:
        for _ in range(10_000):
            c.inc()
            h.observe(0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value() == 40_000 and h.count() == 40_000
