"""What the controller says about itself at /metrics: agents connected, ingest totals, cloud
poll durations per provider, jobs by state, the TSDB's size and rollup progress (registered
by the compactor), datapoint query durations, and the process. Other modules add theirs
to ``services.selfmetrics`` (rules: evaluations)."""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from controller.monitor.selfmetrics import LabelValues, SelfMetrics
from overcast import __version__

if TYPE_CHECKING:
    from controller.services import Services
    from controller.store.base import Store

JOB_COUNT_EVERY = 10.0  # seconds a count of jobs by state is reused (it reads every job)
QUERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def register(services: Services) -> None:
    """Register the controller's own metrics into ``services.selfmetrics`` (once)."""
    m = services.selfmetrics
    if "overcast_agents_connected" in m:
        return
    started = time.time()
    m.gauge_fn("overcast_build_info", "The controller's version", lambda: {(__version__,): 1.0},
               ("version",))
    m.gauge_fn("process_start_time_seconds", "When the controller started (Unix seconds)",
               lambda: {(): started})
    m.counter_fn("process_cpu_seconds_total", "CPU seconds the controller used", _cpu)
    m.gauge_fn("process_resident_memory_bytes", "The controller's resident memory", _rss)
    m.gauge_fn("overcast_agents_connected", "Agents with an open stream",
               lambda: {(): float(len(services.registry))})
    ing = services.ingestor
    m.counter_fn("overcast_ingest_samples_total", "Metric samples stored since the start",
                 lambda: {(): float(ing.samples_stored)})
    m.counter_fn("overcast_ingest_batches_total", "Agents' metric batches stored since the start",
                 lambda: {(): float(ing.batches_stored)})
    m.counter_fn("overcast_ingest_replays_total",
                 "Metric batches received again (after a reconnect) and not stored twice",
                 lambda: {(): float(ing.replays)})
    m.gauge_fn("overcast_tsdb_series", "Time series stored",
               lambda: {(): float(services.tsdb.series_count)})
    m.gauge_fn("overcast_store_memory_bytes",
               "Memory the store (RocksDB) holds: block cache, memtables, file readers",
               lambda: {(part,): float(n) for part, n in services.store.memory().items()},
               ("part",))
    polls = m.histogram("overcast_cloud_poll_duration_seconds",
                        "How long a poll of a cloud took, by provider and outcome",
                        ("provider", "outcome"))

    def polled(org: str, cloud_id: str, status: dict[str, Any], seconds: float) -> None:
        if status.get("state") == "removed":
            return
        doc = services.clouds.load_any(org, cloud_id)
        polls.observe(seconds, provider=str(doc.get("provider", "")) if doc else "unknown",
                      outcome="ok" if status.get("state") == "ok" else "error")

    services.pollers.on_polled.append(polled)
    m.gauge_fn("overcast_jobs", "Jobs by state (counted at most every 10 s)",
               _JobCounts(services.store).counts, ("state",))
    query_histogram(m)


def query_histogram(m: SelfMetrics) -> Any:
    return m.histogram("overcast_datapoints_query_seconds",
                       "How long a datapoints query took, by kind (instant or range)",
                       ("kind",), QUERY_BUCKETS)


class _JobCounts:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._at = 0.0
        self._counts: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def counts(self) -> Mapping[LabelValues, float]:
        with self._lock:
            if time.monotonic() - self._at > JOB_COUNT_EVERY:
                counts: dict[LabelValues, float] = {(s,): 0.0 for s in
                                                    ("queued", "running", "succeeded", "failed")}
                for _, raw in self.store.scan("job/"):
                    state = str(json.loads(raw).get("status", ""))
                    counts[(state,)] = counts.get((state,), 0.0) + 1
                self._counts, self._at = counts, time.monotonic()
            return self._counts


def _cpu() -> Mapping[LabelValues, float]:
    t = os.times()
    return {(): t.user + t.system}


def _rss() -> Mapping[LabelValues, float]:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return {(): float(pages * os.sysconf("SC_PAGE_SIZE"))}
    except (OSError, ValueError, IndexError):  # not Linux: the peak instead
        return {(): float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}
