"""An embedded time-series store on the state store.

A series is a metric name plus labels (one of them ``machine_id``), interned to a short id.
Keys: ``ts/<sid:8 hex>/<time_ms:12 hex>`` → the value as a big-endian double, so one series'
samples are contiguous and in time order; ``tsidx/<org>/<metric>/<sid>`` finds the series of
a metric; ``tsmeta/<sid>`` holds its labels. Samples are written in batches (the ingest path
groups many agents' batches into one write); a sample at the same time overwrites, so
replaying a batch stores nothing twice. Raw samples are kept ``retention`` seconds."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from controller.store.base import Batch, Store

log = logging.getLogger(__name__)

_DOUBLE = struct.Struct(">d")
NEXT_SID_KEY = "meta/tsdb/next_sid"


@dataclass(frozen=True)
class Series:
    sid: int
    org: str
    metric: str
    labels: Mapping[str, str]


def series_prefix(sid: int) -> str:
    return f"ts/{sid:08x}/"


def sample_key(sid: int, t_ms: int) -> str:
    return f"ts/{sid:08x}/{t_ms:012x}"


class TSDB:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._ids: dict[str, int] = {}  # canonical series name -> sid
        self._series: dict[int, Series] = {}
        self._by_metric: dict[tuple[str, str], list[int]] = {}
        raw = store.get(NEXT_SID_KEY)
        self._next = int(raw) if raw else 1
        for key, value in store.scan("tsmeta/"):
            meta = json.loads(value)
            self._remember(Series(int(key.rsplit("/", 1)[1], 16), meta["org"], meta["metric"],
                                  meta["labels"]))

    def _remember(self, s: Series) -> None:
        self._ids[_canonical(s.org, s.metric, s.labels)] = s.sid
        self._series[s.sid] = s
        self._by_metric.setdefault((s.org, s.metric), []).append(s.sid)

    @property
    def series_count(self) -> int:
        return len(self._series)

    def sid_for(self, batch: Batch, org: str, metric: str, labels: Mapping[str, str]) -> int:
        """The series id, creating the series (in ``batch``) when new."""
        name = _canonical(org, metric, labels)
        sid = self._ids.get(name)
        if sid is not None:
            return sid
        sid = self._next
        self._next += 1
        s = Series(sid, org, metric, dict(labels))
        batch.put(f"tsmeta/{sid:08x}", json.dumps({"org": org, "metric": metric,
                                                    "labels": s.labels}).encode())
        batch.put(f"tsidx/{org}/{metric}/{sid:08x}", b"")
        batch.put(NEXT_SID_KEY, str(self._next).encode())
        self._remember(s)
        return sid

    def add(self, batch: Batch, org: str, samples: Iterable[tuple[str, Mapping[str, str], float, int]]) -> int:
        """Put ``(metric, labels, value, time_ms)`` samples into ``batch``; returns how many."""
        n = 0
        put = batch.puts.__setitem__
        for metric, labels, value, t_ms in samples:
            sid = self.sid_for(batch, org, metric, labels)
            put(f"ts/{sid:08x}/{t_ms:012x}", _DOUBLE.pack(value))
            n += 1
        return n

    def select(self, org: str, metric: str) -> list[Series]:
        return [self._series[s] for s in self._by_metric.get((org, metric), ())]

    def metrics(self, org: str) -> list[str]:
        return sorted({m for (o, m) in self._by_metric if o == org})

    def read(self, sid: int, start_ms: int, end_ms: int) -> Iterator[tuple[int, float]]:
        """Samples of one series with start_ms <= t <= end_ms, in time order."""
        prefix = series_prefix(sid)
        end_key = sample_key(sid, end_ms)
        for key, value in self.store.scan(prefix, start=sample_key(sid, max(start_ms, 0))):
            if key > end_key:
                return
            yield int(key[-12:], 16), _DOUBLE.unpack(value)[0]

    def last_before(self, sid: int, t_ms: int, lookback_ms: int) -> tuple[int, float] | None:
        for key, value in self.store.scan(series_prefix(sid), start=sample_key(sid, t_ms),
                                          reverse=True, limit=1):
            ts = int(key[-12:], 16)
            if ts >= t_ms - lookback_ms:
                return ts, _DOUBLE.unpack(value)[0]
        return None

    def expire(self, cutoff_ms: int) -> int:
        """Drop samples older than ``cutoff_ms`` in every series; returns series touched."""
        for sid in list(self._series):
            self.store.delete_range(series_prefix(sid), sample_key(sid, cutoff_ms))
        return len(self._series)


def _canonical(org: str, metric: str, labels: Mapping[str, str]) -> str:
    return org + "\x00" + metric + "\x00" + "\x00".join(f"{k}={labels[k]}" for k in sorted(labels))
