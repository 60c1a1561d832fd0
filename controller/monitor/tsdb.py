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
from itertools import chain

from controller.store.base import Batch, Store

log = logging.getLogger(__name__)

_DOUBLE = struct.Struct(">d")
NEXT_SID_KEY = "meta/tsdb/next_sid"
_chain = chain.from_iterable


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
    """The series index lives in memory, compactly: one interned tuple per series,
    ``(org, metric, k1, v1, k2, v2, ...)`` with the labels sorted by name, maps to its sid and
    back (a list indexed by sid). With ~100 series per agent, 10,000 agents make a million
    series: a Series object and a labels dict each would cost ~55 KiB per agent, the tuple
    ~18 KiB. ``Series`` objects are made when asked for (``select``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ids: dict[tuple[str, ...], int] = {}  # series key -> sid
        self._keys: list[tuple[str, ...] | None] = [None]  # sid -> series key (None: no series)
        self._count = 0
        self._by_metric: dict[tuple[str, str], list[int]] = {}
        self._strings: dict[str, str] = {}  # one copy of each org, metric, label name and value
        raw = store.get(NEXT_SID_KEY)
        self._next = int(raw) if raw else 1
        for key, value in store.scan("tsmeta/"):
            meta = json.loads(value)
            self._remember(int(key.rsplit("/", 1)[1], 16),
                           _series_key(meta["org"], meta["metric"], meta["labels"]))

    def _remember(self, sid: int, key: tuple[str, ...]) -> None:
        intern = self._strings.setdefault
        key = tuple([intern(x, x) for x in key])
        self._ids[key] = sid
        if sid >= len(self._keys):
            self._keys.extend([None] * (sid + 1 - len(self._keys)))
        if self._keys[sid] is None:
            self._count += 1
        self._keys[sid] = key
        self._by_metric.setdefault((key[0], key[1]), []).append(sid)

    def _make_series(self, sid: int) -> Series:
        key = self._keys[sid]
        assert key is not None
        return Series(sid, key[0], key[1], dict(zip(key[2::2], key[3::2], strict=True)))

    @property
    def _series(self) -> dict[int, Series]:
        """Every series by sid (made on each call: for tests and tools, not the hot path)."""
        return {sid: self._make_series(sid) for sid, key in enumerate(self._keys) if key is not None}

    @property
    def series_count(self) -> int:
        return self._count

    def sid_for(self, batch: Batch, org: str, metric: str, labels: Mapping[str, str]) -> int:
        """The series id, creating the series (in ``batch``) when new."""
        key = _series_key(org, metric, labels)
        sid = self._ids.get(key)
        if sid is not None:
            return sid
        return self._create(batch, key, org, metric, labels)

    def _create(self, batch: Batch, key: tuple[str, ...], org: str, metric: str,
                labels: Mapping[str, str]) -> int:
        sid = self._next
        self._next += 1
        batch.put(f"tsmeta/{sid:08x}", json.dumps({"org": org, "metric": metric,
                                                    "labels": dict(labels)}).encode())
        batch.put(f"tsidx/{org}/{metric}/{sid:08x}", b"")
        batch.put(NEXT_SID_KEY, str(self._next).encode())
        self._remember(sid, key)
        return sid

    def add(self, batch: Batch, org: str, samples: Iterable[tuple[str, Mapping[str, str], float, int]]) -> int:
        """Put ``(metric, labels, value, time_ms)`` samples into ``batch``; returns how many."""
        n = 0
        put = batch.puts.__setitem__
        pack = _DOUBLE.pack
        get = self._ids.get
        last_t: int | None = None
        tail = ""
        for metric, labels, value, t_ms in samples:
            key = (org, metric, *_chain(sorted(labels.items())))
            sid = get(key)
            if sid is None:
                sid = self._create(batch, key, org, metric, labels)
            if t_ms != last_t:  # a batch's samples mostly share one time
                last_t, tail = t_ms, f"{t_ms:012x}"
            put(f"ts/{sid:08x}/{tail}", pack(value))
            n += 1
        return n

    def select(self, org: str, metric: str) -> list[Series]:
        return [self._make_series(s) for s in self._by_metric.get((org, metric), ())]

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

    def sids(self) -> list[int]:
        """Every series id, in order."""
        return [sid for sid, key in enumerate(self._keys) if key is not None]

    def expire(self, cutoff_ms: int, sids: Iterable[int] | None = None) -> int:
        """Drop samples older than ``cutoff_ms`` in every series (or in ``sids`` only: the
        retention task goes through them in slices); returns series touched."""
        n = 0
        for sid in self.sids() if sids is None else sids:
            self.store.delete_range(series_prefix(sid), sample_key(sid, cutoff_ms))
            n += 1
        return n


def _series_key(org: str, metric: str, labels: Mapping[str, str]) -> tuple[str, ...]:
    """What identifies a series: ``(org, metric, name1, value1, ...)``, names sorted."""
    return (org, metric, *_chain(sorted(labels.items())))
